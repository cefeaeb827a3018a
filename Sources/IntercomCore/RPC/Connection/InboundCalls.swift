package import IntercomTransport
internal import DequeModule
package import IntercomWire

/// The other side's calls and routed messages this side serves: which run, which
/// wait for a handler slot, the bytes they hold and the handler deadline timer.
/// One part of ``ConnectionStateMachine``: no locks, no I/O, no tasks — each
/// event says what to start, cancel or arm, and the peer does it after releasing
/// its lock.
///
/// A handler's task is created outside the lock, so a call is recorded before
/// its task exists (``attach(_:to:)`` adds it). A cancel frame or a deadline that
/// comes in between is remembered and applied when the task is attached.
package struct InboundCalls {
    /// Work to run after a handler's reply is queued (``CallContext/afterReply(_:)``).
    package typealias AfterReply = @Sendable () async -> Void

    /// A call or routed message to run.
    package struct Request {
        package let id: UInt64
        /// A call (answered) rather than a one-way message (not answered, not cancellable).
        package let isCall: Bool
        package let frame: Frame
        /// Bytes it holds while queued or running (against the byte budget).
        package let bytes: Int
        /// When the caller stops waiting, from the frame's timeout and its arrival.
        package let deadline: Deadline?

        package init(id: UInt64, isCall: Bool, frame: Frame, bytes: Int, deadline: Deadline?) {
            self.id = id
            self.isCall = isCall
            self.frame = frame
            self.bytes = bytes
            self.deadline = deadline
        }
    }

    /// A call that is queued or running, by id.
    private struct Entry {
        var task: Task<Void, Never>?
        let deadline: Deadline?
        var running = false
        var cancelRequested = false
        /// ``CallContext/afterReply(_:)`` work, run once the reply is queued.
        var afterReply: [AfterReply] = []
    }

    private var calls: [UInt64: Entry] = [:]
    private var queue = Deque<Request>()
    /// Handlers running (calls and one-way messages).
    package private(set) var active = 0
    /// Bytes held for calls: queued and running requests, and replies waiting
    /// for the caller to read.
    package private(set) var bytes = 0
    /// The most bytes held at once since the memory was last handed back.
    private var peakBytes = 0
    /// Reading is paused for the call queue or the byte budget.
    private var paused = false
    private var timer = DeadlineTimer()

    package let maxConcurrent: Int
    package let maxQueued: Int
    package let byteBudget: Int

    package init(maxConcurrent: Int, maxQueued: Int, byteBudget: Int) {
        self.maxConcurrent = maxConcurrent
        self.maxQueued = maxQueued
        self.byteBudget = byteBudget
    }

    package var queuedCount: Int { self.queue.count }

    /// What an arrival leaves to do.
    package enum Arrival {
        /// Start this request's handler now (and arm the handler timer, if asked).
        case start(Request, armTimerAt: Deadline?, pauseReading: Bool)
        /// It waits for a handler slot.
        case queued(pauseReading: Bool)
        /// Its id is 0 or already in use: a protocol violation.
        case reusedID
    }

    /// A call or routed message arrived. Past the queue limit or the byte budget
    /// the answer says to pause reading — every time, so a resume posted from a
    /// finishing handler can never leave the connection reading past the budget
    /// for more than one read.
    package mutating func arrive(_ request: Request) -> Arrival {
        // Id 0 is "the whole connection" in error frames and a reply is matched by
        // id alone: neither may name a call (docs/PROTOCOL.md, "Calls").
        let startsNow = self.active < self.maxConcurrent
        if request.isCall {
            // One hash lookup on the common path: insert, and put back what was there.
            let entry = Entry(deadline: request.deadline, running: startsNow)
            if request.id == 0 { return .reusedID }
            if let previous = self.calls.updateValue(entry, forKey: request.id) {
                self.calls[request.id] = previous
                return .reusedID
            }
        }
        self.bytes += request.bytes
        self.peakBytes = max(self.peakBytes, self.bytes)
        guard startsNow else {
            self.queue.append(request)
            return .queued(pauseReading: self.takePause())
        }
        let arm = self.started(request, marked: true)
        return .start(request, armTimerAt: arm, pauseReading: self.takePause())
    }

    /// Whether reading must pause now (over the queue limit or the byte budget).
    private mutating func takePause() -> Bool {
        guard self.isOverLimit else { return false }
        self.paused = true
        return true
    }

    /// Marks `request` running; returns when to arm the handler timer, if needed.
    /// `marked`: its entry says so already (set when it was recorded).
    private mutating func started(_ request: Request, marked: Bool) -> Deadline? {
        self.active += 1
        guard request.isCall else { return nil }
        if !marked { self.calls[request.id]?.running = true }
        // The deadline travels in the frame: the handler is cancelled when it passes,
        // even if the caller's cancel frame never comes.
        guard let deadline = request.deadline, self.timer.needsTimer(for: deadline) else { return nil }
        return deadline
    }

    /// The task for call `id` exists now. Returns whether to cancel it at once
    /// (a cancel frame or its deadline came first).
    package mutating func attach(_ task: Task<Void, Never>, to id: UInt64) -> Bool {
        guard let index = self.calls.index(forKey: id) else { return false }  // Already finished.
        self.calls.values[index].task = task
        return self.calls.values[index].cancelRequested
    }

    /// What a cancel frame leaves to do.
    package enum Cancellation {
        /// Cancel this running handler's task.
        case cancel(Task<Void, Never>)
        /// The call was still queued and is dropped: its caller gave up, so it never
        /// runs and is not answered. Resume reading if the pause is over.
        case dropped(resumeReading: Bool)
        /// Nothing to do (unknown id, finished, or the task is not attached yet and
        /// will be cancelled when it is).
        case none
    }

    /// The caller cancelled call `id`.
    package mutating func cancel(_ id: UInt64) -> Cancellation {
        guard var entry = self.calls[id] else { return .none }
        guard entry.running else {
            self.calls[id] = nil
            if let index = self.queue.firstIndex(where: { $0.id == id }) {
                self.bytes -= self.queue.remove(at: index).bytes
            }
            return .dropped(resumeReading: self.takeResume())
        }
        guard let task = entry.task else {
            entry.cancelRequested = true
            self.calls[id] = entry
            return .none
        }
        return .cancel(task)
    }

    /// A reply could not be written at once and waits for the caller to read: it
    /// holds `bytes` more until its handler finishes.
    package mutating func replyWaiting(_ bytes: Int) {
        self.bytes += bytes
        self.peakBytes = max(self.peakBytes, self.bytes)
    }

    /// What a finished handler leaves to do.
    package struct Finish {
        /// ``CallContext/afterReply(_:)`` work to run.
        package var afterReply: [AfterReply] = []
        /// The next queued request to start (with the handler timer to arm, if asked).
        package var next: Request?
        package var armTimerAt: Deadline?
        package var resumeReading = false
        /// The connection is over and held much: hand freed memory back to the system.
        package var releaseMemory = false
    }

    /// The handler of `id` finished (its reply is queued); it held `released` bytes.
    /// `ended` says whether the connection is over (nothing more starts).
    package mutating func finished(_ id: UInt64, isCall: Bool, released: Int, ended: Bool) -> Finish {
        var finish = Finish()
        if isCall { finish.afterReply = self.calls.removeValue(forKey: id)?.afterReply ?? [] }
        self.active -= 1
        self.bytes -= released
        if ended {
            finish.releaseMemory = self.takeMemoryToRelease()
            return finish
        }
        if let next = self.queue.popFirst() {
            finish.next = next
            finish.armTimerAt = self.started(next, marked: false)
        }
        finish.resumeReading = self.takeResume()
        return finish
    }

    /// Registers after-reply work for call `id`; false if it is not queued or
    /// running (a one-way message, or finished): then run it at once.
    package mutating func addAfterReply(_ action: @escaping AfterReply, to id: UInt64) -> Bool {
        guard id != 0, self.calls[id] != nil else { return false }
        self.calls[id]!.afterReply.append(action)
        return true
    }

    /// The handler timer asked for is armed.
    package mutating func timerArmed(_ timer: any ScheduledWork, at deadline: Deadline) {
        self.timer.record(timer, at: deadline)
    }

    /// What the handler timer's firing leaves to do.
    package struct Expiry {
        /// Tasks of handlers past their caller's deadline: cancel them.
        package var overdue: [Task<Void, Never>]
        package var armTimerAt: Deadline?
    }

    /// The handler timer fired at `now`. (Handlers remove themselves when they end.)
    package mutating func timerFired(at now: Deadline) -> Expiry {
        self.timer.fired(at: now)
        var overdue: [Task<Void, Never>] = []
        var next: Deadline?
        for (id, entry) in self.calls where entry.running && !entry.cancelRequested {
            guard let deadline = entry.deadline else { continue }
            if deadline <= now {
                self.calls[id]!.cancelRequested = true
                if let task = entry.task { overdue.append(task) }
            } else if next.map({ deadline < $0 }) ?? true {
                next = deadline
            }
        }
        let arm = next.flatMap { self.timer.needsTimer(for: $0) ? $0 : nil }
        return Expiry(overdue: overdue, armTimerAt: arm)
    }

    /// What the connection's end leaves to do for the calls it serves.
    package struct Ending {
        /// Running handlers' tasks: cancel them (each still finishes and reports).
        package var tasks: [Task<Void, Never>]
        package var timers: [any ScheduledWork]
        package var releaseMemory: Bool
    }

    /// The connection ended: queued calls are dropped, running ones told to stop.
    package mutating func end() -> Ending {
        for request in self.queue { self.bytes -= request.bytes }
        self.queue.removeAll()
        self.calls = self.calls.filter { $0.value.running }
        for id in self.calls.keys { self.calls[id]!.cancelRequested = true }
        return Ending(
            tasks: self.calls.values.compactMap(\.task), timers: self.timer.takeArmed(),
            releaseMemory: self.takeMemoryToRelease())
    }

    private var isOverLimit: Bool { self.queue.count >= self.maxQueued || self.bytes >= self.byteBudget }

    /// Whether reading was paused and may resume now.
    private mutating func takeResume() -> Bool {
        guard self.paused, !self.isOverLimit else { return false }
        self.paused = false
        return true
    }

    /// Once the connection is over and its last handler finished: whether it held
    /// enough that its freed memory should go back to the system (once).
    private mutating func takeMemoryToRelease() -> Bool {
        guard self.active == 0, self.peakBytes >= ReleasedMemory.threshold else { return false }
        self.peakBytes = 0
        return true
    }
}
