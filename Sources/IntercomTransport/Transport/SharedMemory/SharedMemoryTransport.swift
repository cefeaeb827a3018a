#if os(Linux)
internal import CIntercomShims
internal import DequeModule
internal import Glibc
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization

/// A ``FrameTransport`` over two shared-memory rings (one per direction), with
/// the connection's Unix socket kept open beside them as the liveness channel:
/// when the other process dies or closes, the socket ends and so does this.
///
/// Senders on any thread copy their frames straight into the outbound ring
/// under one lock; bytes that do not fit wait in an overflow queue that the
/// transport's own thread moves on as the reader frees room. That thread reads
/// the inbound ring, delivers frames, runs timers and executor jobs; when idle
/// it spins for ``SharedMemoryOptions/spinDuration`` and then sleeps on a futex
/// (its "doorbell": the data word of the ring it reads), which everyone with
/// news for it rings — the other process after writing, this process's threads
/// after posting work.
final class SharedMemoryTransport: FrameTransport, TaskExecutor, WritabilityWaiting, @unchecked Sendable {
    // @unchecked: `loop` is touched only on the transport's thread; the rest is
    // immutable, atomic, or guarded by `writer` / `mail`.
    let inbound: SharedMemoryRing
    let outbound: SharedMemoryRing
    let regions: (inbound: SharedMemoryRegion, outbound: SharedMemoryRegion)
    /// This side's pool for large frames (used under `writer`), if the other side reads references.
    let outboundPool: BufferPoolWriter?
    /// The other side's pool, if it announced one.
    let inboundPool: BufferPoolReader?
    /// The socket the connection began on; now only says when the other side is gone.
    let socket: NIOFrameTransport
    let options: SharedMemoryOptions
    let logger: Logger
    let thread: pthread_t

    let writer = Locked(Writer())
    let blockedSendersObserver = SetOnce<@Sendable () -> Void>()
    let mail = Locked(Mail())
    /// Set whenever `mail` holds something, so the spinning thread need not lock.
    let hasMail = Atomic<Bool>(false)
    /// Whether the overflow queue holds bytes (kept in step with it under `writer`).
    let overflowing = Atomic<Bool>(false)
    let loop: LoopState

    struct Writer {
        var state = SharedMemoryRing.WriterState()
        /// Bytes waiting for room in the ring, in order.
        var overflow = Deque<ByteBuffer>()
        var closed = false
        /// Why senders are refused once closed.
        var closedError = IntercomError(.closed, "the connection is closed")
        var failure: ProtocolError?
        var waiters = WritabilityWaiters()
    }

    struct Mail {
        var jobs = Deque<UnownedJob>()
        var timers: [SharedMemoryTimer] = []
        var receiver: (any FrameReceiver)?
        var pauseChanges: [(Bool, ReadPauseReason)] = []
        var closeRequested = false
        var socketEnded = false
        /// The thread has ended; jobs and timers go to the socket's event loop.
        var exited = false

        /// Empties what was taken, keeping the collections' capacity (`exited` stays).
        mutating func clear() {
            self.jobs.removeAll(keepingCapacity: true)
            self.timers.removeAll(keepingCapacity: true)
            self.pauseChanges.removeAll(keepingCapacity: true)
            self.receiver = nil
            self.closeRequested = false
            self.socketEnded = false
        }
    }

    /// What only the transport's thread touches.
    final class LoopState {
        var receiver: (any FrameReceiver)?
        var reader = SharedMemoryRing.ReaderState()
        var cumulation = ByteBuffer()
        var decoder: FrameDecoder
        var pauseReasons: ReadPauseReason = []
        var timers: [SharedMemoryTimer] = []
        /// The other half of the mail's double buffer (see ``takeMail()``).
        var spareMail = Mail()
        /// The earliest deadline in `timers` (cancelled ones included until it passes).
        var earliestTimer: ContinuousClock.Instant?
        var closing = false
        var closeStarted: ContinuousClock.Instant?
        var socketEnded = false
        var finished = false
        /// The cumulation holds bytes not yet decoded (those read during the upgrade).
        var undecoded = false
        /// A pool reference read during the upgrade, after the bytes in the cumulation.
        var pendingReference: BufferPoolReference?
        init(limits: WireLimits) { self.decoder = FrameDecoder(limits: limits) }
    }

    /// Made on the thread that becomes the transport's thread (the one the
    /// upgrade ran on); ``run()`` then serves the connection on it.
    init(
        inbound: (ring: SharedMemoryRing, region: SharedMemoryRegion),
        outbound: (ring: SharedMemoryRing, region: SharedMemoryRegion),
        pools: (inbound: BufferPoolReader?, outbound: BufferPoolWriter?),
        socket: NIOFrameTransport, options: SharedMemoryOptions, limits: WireLimits, logger: Logger,
        positions: Positions
    ) {
        self.inbound = inbound.ring
        self.outbound = outbound.ring
        self.regions = (inbound.region, outbound.region)
        self.inboundPool = pools.inbound
        self.outboundPool = pools.outbound
        self.socket = socket
        self.options = options
        self.logger = logger
        self.thread = pthread_self()
        self.loop = LoopState(limits: limits)
        self.writer.withLock { $0.state = positions.writer }
        self.loop.reader = positions.reader
        self.loop.cumulation = positions.received
        self.loop.undecoded = positions.received.readableBytes > 0
        self.loop.pendingReference = positions.reference
    }

    /// Where the rings stand when the transport takes over from the upgrade.
    struct Positions {
        var writer: SharedMemoryRing.WriterState
        var reader: SharedMemoryRing.ReaderState
        /// Bytes already taken from the inbound ring, not yet decoded.
        var received: ByteBuffer
        /// A pool reference taken from the inbound ring after `received`.
        var reference: BufferPoolReference?
    }

    /// The mapped bytes of the outbound ring (header and data).
    var outboundMemoryForTesting: UnsafeMutableRawBufferPointer? { self.outboundMemory }

    var outboundMemory: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: self.regions.outbound.base, count: self.regions.outbound.size)
    }

    // MARK: FrameTransport

    var executor: any TaskExecutor { self }
    var isOnTransportThread: Bool { pthread_equal(pthread_self(), self.thread) != 0 }
    var isSharedMemory: Bool { true }
    var peerCredentials: KernelCredentials? { self.socket.peerCredentials }

    func setReceiver(_ receiver: any FrameReceiver) {
        let ended = self.post { mail -> Bool in
            if mail.exited { return true }
            mail.receiver = receiver
            return false
        }
        // The connection ended before anyone listened (the other process died
        // during the upgrade): say so now, or the receiver would wait forever.
        if ended { receiver.transportClosed() }
    }

    func send(_ bytes: ByteBuffer) {
        _ = self.enqueue(bytes, onlyIfWritable: false)
    }

    func sendIfWritable(_ bytes: ByteBuffer) -> Bool {
        self.enqueue(bytes, onlyIfWritable: true)
    }

    /// Copies `bytes` into the outbound ring now, as far as it has room; the rest
    /// waits in the overflow queue for the transport's thread.
    func enqueue(_ bytes: ByteBuffer, onlyIfWritable: Bool) -> Bool {
        var overflowed = false
        var failure: ProtocolError?
        let accepted = self.writer.withLock { writer -> Bool in
            guard !writer.closed, !onlyIfWritable || writer.overflow.isEmpty else { return false }
            guard writer.overflow.isEmpty else {
                writer.overflow.append(bytes)
                return true
            }
            var rest = bytes
            do throws(ProtocolError) {
                if try self.writePooled(rest, state: &writer.state) { return true }
                try self.write(&rest, state: &writer.state)
            } catch {
                failure = error
                writer.failure = error
                writer.closed = true
                return false
            }
            if rest.readableBytes > 0 {
                writer.overflow.append(rest)
                self.overflowing.store(true, ordering: .sequentiallyConsistent)
                overflowed = true
            }
            return true
        }
        if let failure {
            self.logger.warning("closing a shared-memory connection: the other side broke its ring", metadata: ["error": "\(failure)"])
            self.post { $0.closeRequested = true }
        } else if overflowed {
            self.post { _ in }  // wakes the thread, which moves the overflow on
        }
        return accepted
    }

    /// Copies `bytes` (whole frames, at least ``BufferPoolWriter/threshold`` of them)
    /// into a free run of this side's pool and puts a reference to it in the ring;
    /// false if they are fewer, or there is no pool, no free run or no room in the
    /// ring for the reference (the bytes then go through the ring).
    func writePooled(_ bytes: ByteBuffer, state: inout SharedMemoryRing.WriterState) throws(ProtocolError) -> Bool {
        guard bytes.readableBytes >= BufferPoolWriter.threshold, let pool = self.outboundPool,
            self.outbound.freeSpace(state) >= 64
        else { return false }
        guard let reference = bytes.withUnsafeReadableBytes({ pool.store($0) }) else { return false }
        // Only this thread writes the ring, and the room it saw can only have grown.
        let written = try self.outbound.tryWriteReference(reference, state: &state)
        precondition(written, "the ring had room for the reference")
        return true
    }

    /// Writes as much of `bytes` as the ring takes now (records of up to the ring's size).
    func write(_ bytes: inout ByteBuffer, state: inout SharedMemoryRing.WriterState) throws(ProtocolError) {
        while bytes.readableBytes > 0 {
            let written = try bytes.withUnsafeReadableBytes { raw throws(ProtocolError) in
                try self.outbound.writeSome(raw, state: &state)
            }
            if written == 0 { return }
            bytes.moveReaderIndex(forwardBy: written)
        }
    }

    func waitUntilWritable() async throws(IntercomError) {
        try await self.suspendUntilWritable()
    }

    func withWritability<R, E: Error>(_ body: (Writability, inout WritabilityWaiters) throws(E) -> R) throws(E) -> R {
        try self.writer.withLock { writer throws(E) -> R in
            let writability: Writability =
                writer.closed ? .closed(writer.closedError) : writer.overflow.isEmpty ? .writable : .full
            return try body(writability, &writer.waiters)
        }
    }

    var blockedSenders: Int { self.writer.withLock { $0.waiters.count } }

    func setReadingPaused(_ paused: Bool, reason: ReadPauseReason) {
        if self.isOnTransportThread {
            self.applyPause(paused, reason: reason)
        } else {
            self.post { $0.pauseChanges.append((paused, reason)) }
        }
    }

    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> any ScheduledWork {
        let timer = SharedMemoryTimer(deadline: .now + delay, body: body)
        let forward = self.post { mail in
            if mail.exited { return true }
            mail.timers.append(timer)
            return false
        }
        if forward { return self.socket.schedule(after: delay, body) }
        return timer
    }

    func close() {
        self.post { $0.closeRequested = true }
    }

    // MARK: TaskExecutor

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let forward = self.post { mail in
            if mail.exited { return true }
            mail.jobs.append(job)
            return false
        }
        if forward {
            // The thread has ended with the connection; tasks that still prefer
            // this executor carry on on the socket's event loop.
            let executor = self.asUnownedTaskExecutor()
            self.socket.executeOnLoop { job.runSynchronously(on: executor) }
        }
    }

    // MARK: Liveness (from the socket's event loop)

    /// The socket ended (the other process closed it or died) or spoke out of turn.
    func socketEnded() {
        self.post { $0.socketEnded = true }
    }

    // MARK: The transport's thread

    /// Changes `mail` under its lock and wakes the transport's thread.
    @discardableResult
    func post<T: Sendable>(_ change: (inout Mail) -> T) -> T {
        let result = self.mail.withLock { change(&$0) }
        self.hasMail.store(true, ordering: .sequentiallyConsistent)
        if !self.isOnTransportThread { self.inbound.wakeReader() }
        return result
    }

    /// Serves the connection until it closes, then hands later jobs to the event loop.
    ///
    /// A busy thread takes turn after turn. An idle one watches only the cheap
    /// signs of work — a few atomic loads, no clock, no lock, no exclusivity
    /// check — between turns, so it sees the other side's next frame within
    /// tens of nanoseconds; it reads the clock once per watch (for the timers
    /// and the spin budget) and sleeps on its futex once the budget is spent.
    func run() {
        let loop = self.loop
        var idleSince: ContinuousClock.Instant?
        var watches = 0
        while !loop.finished {
            if self.turn() {
                idleSince = nil
                continue
            }
            let now = ContinuousClock.now
            let since = idleSince ?? now
            idleSince = since
            if now - since >= self.options.spinDuration {
                self.sleepUntilWork()
                idleSince = nil
                continue
            }
            // Yield now and then, for a peer or a thread of ours that shares this CPU.
            watches &+= 1
            if watches & 15 == 0 { sched_yield() }
            self.watchForWork(spins: 64)
        }
        self.exit()
    }

    /// One pass over every source of work; true if any had some.
    func turn() -> Bool {
        let loop = self.loop
        var busy = false
        if self.hasMail.load(ordering: .sequentiallyConsistent) {
            busy = self.takeMail() || busy
        }
        busy = self.runDueTimers() || busy
        busy = self.readInbound() || busy
        busy = self.moveOverflow() || busy
        if loop.closing || loop.socketEnded { self.finishIfDone() }
        return busy
    }

    /// Spins until a sign of work (posted mail, bytes to move on, inbound bytes
    /// it may read) or `spins` checks pass; timers are the caller's, per watch.
    func watchForWork(spins: Int) {
        let loop = self.loop
        if loop.undecoded || loop.pendingReference != nil || loop.closing || loop.socketEnded { return }
        let reading = loop.receiver != nil && loop.pauseReasons.isEmpty
        let reader = loop.reader
        for _ in 0..<spins {
            if self.hasMail.load(ordering: .relaxed) || self.overflowing.load(ordering: .relaxed) { return }
            if reading, self.inbound.hasData(reader) { return }
            c_intercom_cpu_relax()
        }
    }

    /// Moves what other threads posted into the thread's own state and runs the jobs.
    ///
    /// Mail is double-buffered: the emptied collections of the last turn go back
    /// under the lock with their capacity, so posting a job allocates nothing.
    func takeMail() -> Bool {
        self.hasMail.store(false, ordering: .sequentiallyConsistent)
        let loop = self.loop
        var taken = Mail()
        swap(&taken, &loop.spareMail)
        self.mail.withLock { swap(&taken, &$0) }
        defer {
            taken.clear()
            swap(&taken, &loop.spareMail)
        }
        if let receiver = taken.receiver {
            let first = loop.receiver == nil
            loop.receiver = receiver
            if first { receiver.transportActive() }
        }
        for (paused, reason) in taken.pauseChanges { self.applyPause(paused, reason: reason) }
        if !taken.timers.isEmpty {
            loop.timers.append(contentsOf: taken.timers)
            let earliest = taken.timers.lazy.map(\.deadline).min()!
            loop.earliestTimer = loop.earliestTimer.map { min($0, earliest) } ?? earliest
        }
        if taken.closeRequested, !loop.closing {
            loop.closing = true
            loop.closeStarted = .now
        }
        if taken.socketEnded { loop.socketEnded = true }
        let executor = self.asUnownedTaskExecutor()
        for job in taken.jobs { job.runSynchronously(on: executor) }
        return !taken.jobs.isEmpty || taken.receiver != nil || taken.closeRequested || taken.socketEnded
    }

    func applyPause(_ paused: Bool, reason: ReadPauseReason) {
        if paused {
            self.loop.pauseReasons.insert(reason)
        } else {
            self.loop.pauseReasons.remove(reason)
        }
    }

    func runDueTimers() -> Bool {
        let loop = self.loop
        guard let earliest = loop.earliestTimer else { return false }
        let now = ContinuousClock.now
        guard earliest <= now else { return false }
        var due: [SharedMemoryTimer] = []
        loop.timers.removeAll { timer in
            if timer.isCancelled { return true }
            if timer.deadline <= now {
                due.append(timer)
                return true
            }
            return false
        }
        loop.earliestTimer = loop.timers.lazy.map(\.deadline).min()
        for timer in due { timer.body() }
        return !due.isEmpty
    }

    /// Moves overflowing bytes into the ring as room appears; wakes waiting senders once it is empty.
    func moveOverflow() -> Bool {
        guard self.overflowing.load(ordering: .sequentiallyConsistent) else { return false }
        var moved = false
        var failure: ProtocolError?
        let waiters = self.writer.withLock { writer -> [UnsafeContinuation<Void, any Error>]? in
            guard !writer.overflow.isEmpty, !writer.closed else { return nil }
            while var first = writer.overflow.popFirst() {
                let before = first.readableBytes
                do throws(ProtocolError) {
                    try self.write(&first, state: &writer.state)
                } catch {
                    failure = error
                    writer.failure = error
                    return nil
                }
                if first.readableBytes < before { moved = true }
                if first.readableBytes > 0 {
                    writer.overflow.prepend(first)
                    // Ask the reader for a notice once it frees room.
                    self.outbound.requestSpaceNotice()
                    return nil
                }
            }
            self.overflowing.store(false, ordering: .sequentiallyConsistent)
            return writer.waiters.takeAll()
        }
        if let failure {
            self.fail(failure)
            return true
        }
        if let waiters {
            for waiter in waiters { waiter.resume() }
            self.loop.receiver?.transportWritable()
            return true
        }
        return moved
    }

    /// Bytes from the other side wait to be delivered: in the ring, or taken
    /// from it during the upgrade.
    var hasInboundBytes: Bool {
        let loop = self.loop
        return loop.undecoded || loop.pendingReference != nil || self.inbound.hasData(loop.reader)
    }

    /// Something is ready for the thread (checked once more before sleeping).
    func hasWork() -> Bool {
        let loop = self.loop
        if self.hasMail.load(ordering: .sequentiallyConsistent) { return true }
        if loop.receiver != nil, loop.pauseReasons.isEmpty, self.hasInboundBytes { return true }
        if let next = loop.earliestTimer, next <= .now { return true }
        if loop.closing || loop.socketEnded { return true }
        guard self.overflowing.load(ordering: .sequentiallyConsistent) else { return false }
        return self.writer.withLock { writer in
            !writer.overflow.isEmpty && self.outbound.freeSpace(writer.state) >= 16
        }
    }

    func sleepUntilWork() {
        if self.overflowing.load(ordering: .sequentiallyConsistent) { self.outbound.requestSpaceNotice() }
        let seen = self.inbound.prepareToSleep()
        if self.hasWork() {
            self.inbound.cancelSleep()
            return
        }
        var timeout = Duration.seconds(1)
        if let next = self.loop.earliestTimer {
            timeout = max(.zero, min(timeout, next - .now))
        }
        self.inbound.sleep(seen: seen, timeout: timeout)
    }

    /// A broken ring: tell the receiver, tell the other side (best effort) and close.
    func fail(_ error: ProtocolError) {
        let loop = self.loop
        guard !loop.finished, !loop.closing else { return }
        self.logger.warning("closing a shared-memory connection after a protocol violation", metadata: ["error": "\(error)"])
        loop.receiver?.transportFailed(error)
        self.writer.withLock { writer in
            var frame = ErrorBody(connectionError: error).frame(id: 0)
            if writer.failure == nil, writer.overflow.isEmpty { try? self.write(&frame, state: &writer.state) }
            writer.overflow.removeAll()
        }
        loop.closing = true
        loop.closeStarted = .now
    }

    /// Ends the connection once it is closing and nothing is left to move: the
    /// other side's last frames are read first (they were written before its socket closed).
    func finishIfDone() {
        let loop = self.loop
        if loop.socketEnded {
            // Whatever the other side wrote before its socket ended was read above.
            loop.finished = true
            return
        }
        let drained = self.writer.withLock { $0.overflow.isEmpty || $0.failure != nil }
        let waitedTooLong = loop.closeStarted.map { .now - $0 > .seconds(2) } ?? true
        if drained || waitedTooLong { loop.finished = true }
    }

    /// Closes the socket, fails waiting senders, tells the receiver, and hands
    /// this executor's later jobs and timers to the socket's event loop.
    func exit() {
        let error =
            self.loop.socketEnded && !self.loop.closing
            ? IntercomError(.peerLost, "the other side is gone") : IntercomError(.closed, "the connection is closed")
        let waiters = self.writer.withLock { writer -> [UnsafeContinuation<Void, any Error>] in
            writer.closed = true
            writer.closedError = error
            writer.overflow.removeAll()
            return writer.waiters.takeAll()
        }
        for waiter in waiters { waiter.resume(throwing: error) }
        // Closed before the receiver hears of it, as with a socket transport: whoever
        // waits for the connection to close finds its descriptor gone.
        self.socket.close()
        try? self.socket.channel.closeFuture.wait()
        self.loop.receiver?.transportClosed()
        self.loop.receiver = nil
        // Anything posted until now runs here; later posts go to the event loop.
        while true {
            let (jobs, timers, late) = self.mail.withLock { mail -> (Deque<UnownedJob>, [SharedMemoryTimer], (any FrameReceiver)?) in
                defer {
                    mail.jobs.removeAll()
                    mail.timers.removeAll()
                    mail.receiver = nil
                }
                if mail.jobs.isEmpty { mail.exited = true }
                return (mail.jobs, mail.timers, mail.receiver)
            }
            // A receiver set after the thread last took its mail never heard of the
            // end (``setReceiver(_:)`` tells those that come after `exited`).
            late?.transportClosed()
            for timer in timers + self.loop.timers where !timer.isCancelled {
                _ = self.socket.schedule(after: max(.zero, timer.deadline - .now)) {
                    if !timer.isCancelled { timer.body() }
                }
            }
            self.loop.timers.removeAll()
            self.loop.earliestTimer = nil
            if jobs.isEmpty { break }
            let executor = self.asUnownedTaskExecutor()
            for job in jobs { job.runSynchronously(on: executor) }
        }
    }
}
#endif
