@_spi(IntercomInternals) public import IntercomTransport
public import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization
internal import Tracing

/// One end of a connection between two processes: it calls the other side's
/// handlers, answers calls with its ``Router``, and sends and receives one-way
/// messages. Both sides are peers: either may call the other, with many calls
/// in flight in both directions.
///
/// Make one with ``Peer/pair(router:configuration:)``,
/// ``Peer/connect(unixPath:router:configuration:)``,
/// ``Peer/connect(to:router:configuration:)`` (an address: `tls://host:port`), a ``PeerListener``,
/// ``Peer/adopt(fileDescriptor:router:configuration:)`` or
/// ``Peer/standardIO(router:configuration:)``; each returns once the handshake
/// is done.
///
/// ```swift
/// let ack = try await peer.call("camera.exposure.set", SetExposure(ms: 10), returning: Ack.self, timeout: .seconds(1))
/// try await peer.send("log.line", "exposure set")
/// for try await note in peer.messages(as: Note.self) { … }
/// ```
///
/// When the other process closes the connection or dies, every pending call fails
/// at once with ``IntercomError/Code/peerLost``; messages that already arrived are
/// still delivered before receiving ends with that error.
public final class Peer: Sendable {
    /// Who is on the other end: its handshake's name and pid, and the kernel's
    /// credentials for a local socket.
    public let remote: PeerIdentity
    /// The name the other side gave in its handshake (``remote``'s ``PeerIdentity/name``).
    @available(*, deprecated, message: "use remote.name")
    public var remoteName: String { self.remote.name }
    /// The process id the other side gave in its handshake (``remote``'s
    /// ``PeerIdentity/reportedPID``; the kernel's is ``PeerIdentity/credentials``).
    @available(*, deprecated, message: "use remote.reportedPID, or remote.credentials?.pid for the kernel's")
    public var remotePID: Int32 { self.remote.reportedPID }
    /// The largest frame the other side accepts.
    public let remoteMaxFrameSize: Int
    /// The payload codec both sides agreed on.
    public let codec: PayloadCodec
    /// The configuration this side uses.
    public let configuration: Configuration

    let transport: any FrameTransport
    let router: Router?
    /// Calls both ways and the connection's life: one state machine under one lock.
    let state: Locked<ConnectionStateMachine>
    let nextCallID = Atomic<UInt64>(1)
    let lateReplies = Atomic<Int>(0)
    /// Frames and bytes handed to the transport since the handshake (any thread, per send).
    let sent = TrafficCounter()
    /// A small frame buffer to encode the next frame into (see ``takeFrameBuffer()``).
    let spareFrameBuffer = Mutex<ByteBuffer?>(nil)
    /// Frames and bytes read since the handshake, published once per read batch.
    let received = TrafficCounter()
    let inbox: Inbox
    let statisticsWatch = StatisticsWatch()
    let arrivals = Arrivals()
    let remoteTopics = Locked(RemoteTopics())
    /// Streams in both directions, by call id.
    let streams = Locked(StreamTable())
    /// Whether the other side understands streams (its hello said so).
    let remoteSupportsStreams: Bool
    /// Whether the other side understands input streams (client-streaming and bidirectional calls).
    let remoteSupportsInputStreams: Bool
    /// The other side closes its end by itself once told this side suspends.
    let remoteSupportsSuspend: Bool
    /// Where calls and the connection are counted (nil: metrics off).
    let metrics: PeerMetrics?
    /// The tracer of calls and messages (nil: tracing off).
    let tracer: (any Tracer)?
    /// Payloads at least this long are compressed (`Int.max`: none are —
    /// compression is off here or the other side cannot read it).
    let compressionThreshold: Int
    /// The configuration's logger with who this connection is: `service` (this
    /// side's name), `peer` (the other's), `peer.pid` (from the kernel where
    /// local) — every line the connection logs carries them.
    let logger: Logger
    /// Whether this connection is a monitor's (`intercom.monitor`): its own calls are not shown to monitors.
    let isMonitorConnection = Atomic<Bool>(false)

    /// The topics the other side subscribed to, and per topic how many events
    /// were dropped since the last one sent (reported in the next event's id).
    struct RemoteTopics {
        /// Topic (or `*`, every topic) → whether the subscriber wants JSON payloads.
        var subscribed: [String: Bool] = [:]
        var missed: [String: Int] = [:]

        func subscription(for topic: String) -> Bool? { self.subscribed[topic] ?? self.subscribed["*"] }
    }

    /// What a request holds while queued or running: its payload and method name,
    /// plus the frame and task around them.
    static func heldBytes(_ frame: borrowing Frame) -> Int {
        frame.payload.readableBytes + (frame.method?.utf8.count ?? 0) + 256
    }

    init(
        transport: any FrameTransport, router: Router?, configuration: Configuration, remote: Hello, codec: PayloadCodec,
        network: NetworkIdentity? = nil
    ) {
        self.transport = transport
        self.router = router
        self.configuration = configuration
        self.remote = PeerIdentity(
            name: remote.name, reportedPID: Int32(bitPattern: remote.pid), kernel: transport.peerCredentials, network: network)
        var logger = configuration.serviceLogger
        logger[metadataKey: "peer"] = "\(remote.name)"
        logger[metadataKey: "peer.pid"] = "\(self.remote.pid)"
        if let address = self.remote.address { logger[metadataKey: "peer.address"] = "\(address)" }
        self.logger = logger
        self.remoteMaxFrameSize = Int(remote.maxFrameSize)
        self.remoteSupportsStreams = remote.capabilities & Hello.streamsCapability != 0
        self.remoteSupportsInputStreams = remote.capabilities & Hello.inputStreamsCapability != 0
        self.remoteSupportsSuspend = remote.capabilities & Hello.suspendCapability != 0
        self.metrics = PeerMetrics(configuration.metrics, service: configuration.name)
        self.tracer = configuration.tracing.tracer?()
        self.metrics?.connectionOpened()
        self.compressionThreshold =
            configuration.compression.isEnabled && remote.capabilities & Hello.compressionCapability != 0
            ? configuration.compression.threshold : .max
        self.codec = codec
        self.state = Locked(
            ConnectionStateMachine(
                maxConcurrentHandlers: configuration.maxConcurrentHandlers, maxQueuedCalls: configuration.maxQueuedCalls,
                requestByteBudget: configuration.requestByteBudget))
        self.inbox = Inbox(capacity: configuration.inboxCapacity, byteCapacity: configuration.inboxByteCapacity)
        self.inbox.transport = transport
        transport.observeBlockedSenders { [weak self] in self?.statisticsChanged() }
        self.startHeartbeat()
    }

    /// Runs `body` on the connection's state machine under its lock, then wakes
    /// anyone waiting for the statistics it may have changed.
    func withState<R>(_ body: (inout ConnectionStateMachine) -> R) -> R {
        guard let metrics = self.metrics else {
            let result = self.state.withLock(body)
            self.statisticsChanged()
            return result
        }
        // With metrics on, the queue depths are read under the same lock.
        let (result, depths) = self.state.withLock { state in
            (body(&state), (state.outbound.pending.count, state.inbound.active, state.inbound.queuedCount))
        }
        metrics.depths(pending: depths.0, running: depths.1, queued: depths.2)
        self.statisticsChanged()
        return result
    }

    func statisticsChanged() {
        self.statisticsWatch.changed { self.statistics }
    }

    /// Returns true once `condition` holds for ``statistics`` — checked now and at
    /// every change of what they count, never by polling — or false after
    /// `timeout` on the connection's clock. For tests.
    package func waitForStatistics(
        timeout: Duration, until condition: @escaping @Sendable (Statistics) -> Bool
    ) async -> Bool {
        await self.waitUntilWoken(orAfter: timeout) { continuation in
            let key = self.statisticsWatch.add(condition, continuation)
            self.statisticsChanged()  // it may hold already
            return {
                guard let waiter = self.statisticsWatch.remove(key) else { return nil }
                return { @Sendable met in waiter.resume(returning: met) }
            }
        }
    }

    /// An executor that runs tasks on the thread serving this connection.
    ///
    /// A task that prefers it (`withTaskExecutorPreference(peer.executor) { … }`)
    /// sends and receives without a thread hop: the fastest way to make many calls.
    public var executor: any TaskExecutor { self.transport.executor }

    /// What carries this connection's frames now: its socket, or shared-memory
    /// rings once both sides on one host allowed the move (``SharedMemoryOptions``).
    public var medium: TransportMedium { self.transport.medium }

    /// Whether ``medium`` is ``TransportMedium/sharedMemory``.
    public var isSharedMemory: Bool { self.transport.medium == .sharedMemory }

    /// For tests that play a hostile peer: the shared memory of the ring this side
    /// writes (which the other side reads), or nil on a socket.
    package var outboundRingMemoryForTesting: UnsafeMutableRawBufferPointer? {
        self.transport.outboundMemoryForTesting
    }

    // MARK: Waiting for calls

    /// Returns once no call this side made is waiting for its reply (every one
    /// answered, failed, timed out or cancelled).
    ///
    /// - Throws: ``IntercomError/Code/timeout`` if calls are still pending after `timeout`.
    public func waitForOutstandingCalls(timeout: Duration) async throws(IntercomError) {
        let drained = await self.waitUntilWoken(orAfter: timeout) { continuation in
            guard let key = self.withState({ $0.addDrainWaiter { continuation.resume(returning: $0) } }) else { return nil }
            return { self.withState { $0.removeDrainWaiter(key) } }
        }
        guard drained else {
            let left = self.state.withLock { $0.outbound.pending.count }
            throw IntercomError(.timeout, "\(left) call(s) to '\(self.remote.name)' still pending after \(timeout)")
        }
    }

    /// Waits until the waiter `register` files is woken (true), or `timeout` passes on
    /// the connection's clock (false). `register` returns how to take the waiter back
    /// (its wake-up, if it was still waiting), or nil if it need not wait at all.
    func waitUntilWoken(
        orAfter timeout: Duration,
        register: (CheckedContinuation<Bool, Never>) -> (@Sendable () -> (@Sendable (Bool) -> Void)?)?
    ) async -> Bool {
        let timer = Locked<(any ScheduledWork)?>(nil)
        let woken = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            guard let takeBack = register(continuation) else {
                continuation.resume(returning: true)
                return
            }
            // Armed only once the waiter is registered, so it cannot fire too early to find it.
            let work = self.transport.schedule(after: timeout) { takeBack()?(false) }
            timer.withLock { $0 = work }
        }
        timer.withLock { $0 }?.cancel()
        return woken
    }

    // MARK: Observing

    /// A snapshot of what is in flight on a connection.
    public struct Statistics: Sendable, Hashable {
        /// Calls this side made that wait for a reply.
        public var pendingCalls: Int
        /// Handlers running for the other side's calls and routed messages.
        public var runningHandlers: Int
        /// The other side's calls waiting for a free handler slot.
        public var queuedCalls: Int
        /// Tasks suspended because the outbound buffer is full (the other side is not reading).
        public var blockedSenders: Int
        /// Replies that arrived after their call had timed out or been cancelled,
        /// and were dropped, since the connection opened.
        public var lateReplies: Int
        /// Streams this side produces — handlers' outputs and its own calls' inputs —
        /// whose producer waits for the consumer to ask for more (flow control:
        /// the consumer is not reading).
        public var streamsAwaitingCredit: Int = 0
    }

    /// What crossed a connection since its handshake: whole frames (calls,
    /// replies, errors, messages, events, and the protocol's own) and their
    /// bytes on the wire, each way.
    public struct Traffic: Sendable, Hashable {
        /// Frames this side sent.
        public var framesSent: Int
        /// Their bytes, headers included.
        public var bytesSent: Int
        /// Frames this side received.
        public var framesReceived: Int
        /// Their bytes, headers included.
        public var bytesReceived: Int
    }

    /// What crossed this connection so far (magscope's sent/received
    /// accounting; ``close()`` returns it at the end).
    public var traffic: Traffic {
        Traffic(
            framesSent: self.sent.frames.load(ordering: .relaxed), bytesSent: self.sent.bytes.load(ordering: .relaxed),
            framesReceived: self.received.frames.load(ordering: .relaxed),
            bytesReceived: self.received.bytes.load(ordering: .relaxed))
    }

    /// Hands `frames` whole frames in `bytes` to the transport, counted.
    func transmit(_ bytes: ByteBuffer, frames: Int = 1) {
        self.counted(bytes, frames: frames)
        self.transport.send(bytes)
    }

    /// As ``transmit(_:frames:)`` if the transport takes it now; false (and not counted) if not.
    func transmitIfWritable(_ bytes: ByteBuffer, frames: Int = 1) -> Bool {
        // Counted first, taken back if refused: the other side may answer (and its
        // owner read ``traffic``) before this thread runs again after the send.
        self.counted(bytes, frames: frames)
        guard self.transport.sendIfWritable(bytes) else {
            self.sent.add(frames: -frames, bytes: -bytes.readableBytes)
            return false
        }
        return true
    }

    private func counted(_ bytes: ByteBuffer, frames: Int) {
        self.sent.add(frames: frames, bytes: bytes.readableBytes)
    }

    /// What is in flight right now.
    public var statistics: Statistics {
        let (pending, running, queued) = self.state.withLock {
            ($0.outbound.pending.count, $0.inbound.active, $0.inbound.queuedCount)
        }
        return Statistics(
            pendingCalls: pending, runningHandlers: running, queuedCalls: queued,
            blockedSenders: self.transport.blockedSenders,
            lateReplies: self.lateReplies.load(ordering: .relaxed),
            streamsAwaitingCredit: self.streams.withLock {
                $0.credits.values.count(where: \.isWaiting) + $0.inputCredits.values.count(where: \.isWaiting)
            })
    }

    // MARK: Closing

    /// Says goodbye, flushes what is queued and closes the connection. Pending calls
    /// fail with ``IntercomError/Code/closed``. Returns when the connection is closed.
    ///
    /// - Returns: what crossed the connection in its life (``traffic``), the goodbye included.
    @discardableResult
    public func close() async -> Traffic {
        await self.close(reason: IntercomError(.closed, "this side closed the connection", context: .init(peer: self.remote.name)))
    }

    /// Closes as ``close()`` does, failing pending calls (and ending the
    /// connection's state) with `reason`.
    @discardableResult
    func close(reason: IntercomError) async -> Traffic {
        if let ending = self.withState({ $0.beginClosing(reason) }) {
            self.failCalls(ending, reason: reason)
            self.transmit(FrameHeader.empty(kind: .goodbye, id: 0))
            self.transport.close()
        }
        await self.waitUntilClosed()
        return self.traffic
    }

    /// Returns when the connection has ended, whoever ended it.
    public func waitUntilClosed() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            if !self.withState({ $0.addCloseWaiter { continuation.resume() } }) { continuation.resume() }
        }
    }

    /// Whether the connection has ended.
    public var isClosed: Bool { self.state.withLock { $0.isClosed } }

    /// Fails the calls the connection's end left pending (outside the lock).
    func failCalls(_ ending: OutboundCalls.Ending, reason: IntercomError) {
        for timer in ending.timers { timer.cancel() }
        for waiter in ending.drained { waiter(true) }
        for (id, call) in ending.orphans {
            call.continuation?.resume(throwing: reason.with(.init(method: call.method, callID: id, peer: self.remote.name)))
        }
    }
}

/// Two counters on a cache line of their own: senders on every thread add to
/// the sent ones per send, while the transport's thread reads the peer's other
/// fields per frame, and a shared line would bounce between the two. (A
/// precaution: interleaved shared-memory S2 runs with and without the padding
/// differ less than this machine's noise.)
final class TrafficCounter: Sendable {
    private let paddingBefore: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)
    let frames = Atomic<Int>(0)
    let bytes = Atomic<Int>(0)
    private let paddingAfter: (Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0)

    func add(frames: Int, bytes: Int) {
        self.frames.add(frames, ordering: .relaxed)
        self.bytes.add(bytes, ordering: .relaxed)
    }
}

/// Messages read in the current batch, not yet in the inbox.
///
/// The array lives behind a pointer rather than in a stored `var`: every access
/// to a class's stored `var` costs a runtime exclusivity check, and this one is
/// touched once per message at millions of messages a second.
final class Arrivals: @unchecked Sendable {
    // Touched only on the transport's thread (receive / endOfReadBatch / transportClosed).
    let messages = UnsafeMutablePointer<[InboundMessage]>.allocate(capacity: 1)
    /// Frames and bytes read in this batch, published to the peer's totals at its end.
    let tally = UnsafeMutablePointer<(frames: Int, bytes: Int)>.allocate(capacity: 1)
    /// Items of one stream from consecutive frames, handed to its inbox together
    /// (one table lookup and one inbox lock for the run, not one per item).
    let streamItems = UnsafeMutablePointer<StreamItemRun>.allocate(capacity: 1)

    init() {
        self.messages.initialize(to: [])
        self.tally.initialize(to: (0, 0))
        self.streamItems.initialize(to: StreamItemRun())
    }

    deinit {
        self.messages.deinitialize(count: 1)
        self.messages.deallocate()
        self.tally.deallocate()
        self.streamItems.deinitialize(count: 1)
        self.streamItems.deallocate()
    }

    /// Counts one frame read.
    func count(_ frame: borrowing Frame) {
        self.tally.pointee.frames += 1
        self.tally.pointee.bytes += frame.wireSize
    }

    /// The frames and bytes counted since the last call.
    func takeTally() -> (frames: Int, bytes: Int) {
        defer { self.tally.pointee = (0, 0) }
        return self.tally.pointee
    }

    /// Appends `message`; returns how many are collected now.
    func append(_ message: consuming InboundMessage) -> Int {
        self.messages.pointee.append(message)
        return self.messages.pointee.count
    }

    /// The collected messages (the array itself, not a copy); the next batch
    /// starts with room for as many.
    func takeAll() -> [InboundMessage] {
        var batch: [InboundMessage] = []
        swap(&batch, &self.messages.pointee)
        self.messages.pointee.reserveCapacity(batch.count)
        return batch
    }

    var isEmpty: Bool { self.messages.pointee.isEmpty }
}

extension IntercomError {
    /// This error with the context filled in where it was empty.
    func with(_ context: Context) -> IntercomError {
        var copy = self
        copy.context.method = copy.context.method ?? context.method
        copy.context.callID = copy.context.callID ?? context.callID
        copy.context.peer = copy.context.peer ?? context.peer
        return copy
    }
}
