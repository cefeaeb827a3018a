package import IntercomTransport
package import IntercomWire
internal import Synchronization

/// A call this side made, from its sending until its answer, timeout or
/// cancellation. One allocation per call: the continuation, what errors need
/// (method, timeout), the deadline, and the flag a cancellation sets even
/// before the call is registered (the registration then refuses it).
package final class PendingCall: @unchecked Sendable {
    // @unchecked: `continuation` is set before the call is registered (published
    // under the state lock) and read only after it is removed under that lock.
    package var continuation: UnsafeContinuation<Frame, any Error>?
    package let method: String?
    package let timeout: Duration
    package let deadline: Deadline
    private let cancelled = Atomic<Bool>(false)

    package init(method: String?, timeout: Duration, deadline: Deadline) {
        self.method = method
        self.timeout = timeout
        self.deadline = deadline
    }

    /// The calling task was cancelled.
    package func cancel() { self.cancelled.store(true, ordering: .sequentiallyConsistent) }
    package var isCancelled: Bool { self.cancelled.load(ordering: .sequentiallyConsistent) }
}

package struct OutboundCalls {
    /// Woken with `true` when no call is pending, `false` when its time ran out.
    package typealias DrainWaiter = @Sendable (_ drained: Bool) -> Void

    package private(set) var pending: [UInt64: PendingCall] = [:]
    private var timer = DeadlineTimer()
    /// Tasks waiting until no call is pending (``Peer/waitForOutstandingCalls(timeout:)``).
    private var drainWaiters: [UInt64: DrainWaiter] = [:]
    private var nextDrainWaiter: UInt64 = 0

    package init() {}

    /// What a removal leaves to do: the call to answer (nil if it was no longer
    /// pending — a late reply) and the drain waiters to wake if none is left.
    package struct Removal {
        package var call: PendingCall?
        package var drained: [DrainWaiter]
    }

    /// Records call `id`. Returns the instant to arm the call timer at, if no
    /// timer armed already fires by the call's deadline.
    package mutating func register(_ id: UInt64, _ call: PendingCall) -> Deadline? {
        let previous = self.pending.updateValue(call, forKey: id)
        precondition(previous == nil, "call id \(id) registered twice")
        return self.timer.needsTimer(for: call.deadline) ? call.deadline : nil
    }

    /// The timer asked for by ``register(_:_:)`` or ``timerFired(at:)`` is armed.
    package mutating func timerArmed(_ timer: any ScheduledWork, at deadline: Deadline) {
        self.timer.record(timer, at: deadline)
    }

    /// The answer to call `id` arrived (a reply, an error, a pong), or its caller
    /// cancelled it: it is no longer pending.
    package mutating func remove(_ id: UInt64) -> Removal {
        let call = self.pending.removeValue(forKey: id)
        return Removal(call: call, drained: self.takeDrainWaitersIfIdle())
    }

    /// What the call timer's firing leaves to do.
    package struct Expiry {
        /// The calls past their deadline, no longer pending: fail each with `timeout`
        /// and tell the other side to stop its handler.
        package var overdue: [(id: UInt64, call: PendingCall)]
        /// When to arm the timer next, if a call is still pending and no timer covers it.
        package var armTimerAt: Deadline?
        package var drained: [DrainWaiter]
    }

    /// The call timer fired at `now`.
    package mutating func timerFired(at now: Deadline) -> Expiry {
        self.timer.fired(at: now)
        var overdue: [(id: UInt64, call: PendingCall)] = []
        var next: Deadline?
        for (id, call) in self.pending {
            if call.deadline <= now {
                overdue.append((id, call))
            } else if next.map({ call.deadline < $0 }) ?? true {
                next = call.deadline
            }
        }
        for (id, _) in overdue { self.pending.removeValue(forKey: id) }
        let arm = next.flatMap { self.timer.needsTimer(for: $0) ? $0 : nil }
        return Expiry(overdue: overdue, armTimerAt: arm, drained: self.takeDrainWaitersIfIdle())
    }

    /// What the connection's end leaves to do for its calls.
    package struct Ending {
        /// Every call still pending: fail each with the connection's end.
        package var orphans: [(id: UInt64, call: PendingCall)]
        /// Timers still armed, to cancel.
        package var timers: [any ScheduledWork]
        package var drained: [DrainWaiter]
    }

    /// The connection ended: nothing is pending any more.
    package mutating func end() -> Ending {
        let orphans = self.pending.map { (id: $0.key, call: $0.value) }
        self.pending.removeAll()
        return Ending(orphans: orphans, timers: self.timer.takeArmed(), drained: self.takeDrainWaitersIfIdle())
    }

    /// Registers a task that waits until no call is pending; nil if none is
    /// pending now (the waiter need not wait).
    package mutating func addDrainWaiter(_ waiter: @escaping DrainWaiter) -> UInt64? {
        guard !self.pending.isEmpty else { return nil }
        self.nextDrainWaiter += 1
        self.drainWaiters[self.nextDrainWaiter] = waiter
        return self.nextDrainWaiter
    }

    /// Takes back a drain waiter whose time ran out; nil if it was already woken.
    package mutating func removeDrainWaiter(_ key: UInt64) -> DrainWaiter? {
        self.drainWaiters.removeValue(forKey: key)
    }

    private mutating func takeDrainWaitersIfIdle() -> [DrainWaiter] {
        guard self.pending.isEmpty, !self.drainWaiters.isEmpty else { return [] }
        defer { self.drainWaiters.removeAll() }
        return Array(self.drainWaiters.values)
    }
}
