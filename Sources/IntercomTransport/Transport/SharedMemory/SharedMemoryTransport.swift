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
    /// Where descriptors travel, when both sides pass them (see ``DescriptorChannel``).
    let descriptorChannel: DescriptorChannel?
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
        positions: Positions, descriptorChannel: DescriptorChannel?
    ) {
        self.descriptorChannel = descriptorChannel
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
    var medium: TransportMedium { .sharedMemory }
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

    var passesDescriptors: Bool { self.descriptorChannel != nil }

    func send(_ bytes: ByteBuffer, descriptors: [Int32]) throws(IntercomError) {
        guard let channel = self.descriptorChannel else {
            throw IntercomError(
                .invalidPayload,
                "descriptors cannot travel on this connection: the other side's Intercom predates them")
        }
        var refusal: IntercomError?
        // Under the writer lock, as the bytes are queued: the descriptor messages and
        // the flagged frames go out in the same order.
        _ = self.enqueue(bytes, onlyIfWritable: false) { closed throws(IntercomError) in
            if let closed { throw closed }
            do throws(IntercomError) {
                try channel.send(descriptors)
            } catch {
                refusal = error
                throw error
            }
        }
        if let refusal { throw refusal }
    }

    func sendIfWritable(_ bytes: ByteBuffer) -> Bool {
        self.enqueue(bytes, onlyIfWritable: true)
    }

    /// Copies `bytes` into the outbound ring now, as far as it has room; the rest
    /// waits in the overflow queue for the transport's thread.
    ///
    /// `before` runs under the writer lock just before the bytes are queued (with
    /// the error if the connection is closed); if it throws, nothing is queued.
    func enqueue(
        _ bytes: ByteBuffer, onlyIfWritable: Bool, before: ((IntercomError?) throws(IntercomError) -> Void)? = nil
    ) -> Bool {
        var overflowed = false
        var failure: ProtocolError?
        let accepted = self.writer.withLock { writer -> Bool in
            if let before {
                do throws(IntercomError) {
                    try before(writer.closed ? writer.closedError : nil)
                } catch {
                    return false
                }
            }
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
}
#endif
