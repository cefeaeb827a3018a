public import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization
internal import DequeModule

/// One end of a connection between two processes: it calls the other side's
/// handlers, answers calls with its ``Router``, and sends and receives one-way
/// messages. Both sides are peers: either may call the other, with many calls
/// in flight in both directions.
///
/// Make one with ``Peer/pair(router:configuration:)``,
/// ``Peer/connect(unixPath:router:configuration:)``, a ``PeerListener``,
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
    /// The name the other side gave in its handshake.
    public let remoteName: String
    /// The process id the other side reported in its handshake.
    public let remotePID: Int32
    /// The largest frame the other side accepts.
    public let remoteMaxFrameSize: Int
    /// The payload codec both sides agreed on.
    public let codec: PayloadCodec
    /// The configuration this side uses.
    public let configuration: Configuration

    let transport: any FrameTransport
    let router: Router?
    let calls = Locked(CallTable())
    let nextCallID = Atomic<UInt64>(1)
    let lateReplies = Atomic<Int>(0)
    let handlers = Locked(HandlerTable())
    let inbox: Inbox
    let lifecycle = Locked(Lifecycle())
    let arrivals = Arrivals()
    let subscriptions = Locked(Subscriptions())
    let remoteTopics = Locked(RemoteTopics())

    /// This side's subscriptions to the other side's events, by topic.
    struct Subscriptions {
        var byTopic: [String: [ObjectIdentifier: EventQueue]] = [:]
        var ended: IntercomError?
    }

    /// The topics the other side subscribed to, and per topic how many events
    /// were dropped since the last one sent (reported in the next event's id).
    struct RemoteTopics {
        /// Topic (or `*`, every topic) → whether the subscriber wants JSON payloads.
        var subscribed: [String: Bool] = [:]
        var missed: [String: Int] = [:]

        func subscription(for topic: String) -> Bool? { self.subscribed[topic] ?? self.subscribed["*"] }
    }

    /// Calls this side made and is waiting for.
    struct CallTable {
        var pending: [UInt64: PendingCall] = [:]
        var ended: IntercomError?
        var timer = DeadlineTimer()
        /// Tasks waiting until no call is pending (``waitForOutstandingCalls(timeout:)``).
        var drainWaiters: [UInt64: CheckedContinuation<Bool, Never>] = [:]
        var nextDrainWaiter: UInt64 = 0

        /// After a removal: the drain waiters to wake if nothing is pending now.
        mutating func takeDrainWaitersIfIdle() -> [CheckedContinuation<Bool, Never>] {
            guard self.pending.isEmpty, !self.drainWaiters.isEmpty else { return [] }
            defer { self.drainWaiters.removeAll() }
            return Array(self.drainWaiters.values)
        }
    }

    /// Handlers running (or queued) for calls the other side made.
    struct HandlerTable {
        var running: [UInt64: RunningHandler] = [:]
        var active = 0
        var queued = Deque<Frame>()
        var ended = false
        var timer = DeadlineTimer()
        /// Bytes held for calls: queued and running requests, and replies waiting
        /// for the caller to read (bounded by ``Configuration/requestByteBudget``).
        var bytes = 0
        /// Reading is paused for the call queue or the byte budget.
        var paused = false
        /// The most bytes held at once since the memory was last handed back.
        var peakBytes = 0

        /// After the connection ended and its last handler finished: whether it
        /// held enough that its freed memory should go back to the system (once).
        mutating func takeMemoryToRelease() -> Bool {
            guard self.ended, self.active == 0, self.peakBytes >= ReleasedMemory.threshold else { return false }
            self.peakBytes = 0
            return true
        }

        /// Whether the connection must stop reading: too many queued calls or too many bytes.
        func isOverLimit(_ configuration: Configuration) -> Bool {
            self.queued.count >= configuration.maxQueuedCalls || self.bytes >= configuration.requestByteBudget
        }
    }

    /// What a request holds while queued or running: its payload and method name,
    /// plus the frame and task around them.
    static func heldBytes(_ frame: borrowing Frame) -> Int {
        frame.payload.readableBytes + (frame.method?.utf8.count ?? 0) + 256
    }

    struct RunningHandler {
        let task: Task<Void, Never>
        /// When the caller stops waiting (from the frame's timeout), if it said.
        let deadline: ContinuousClock.Instant?
        /// ``CallContext/afterReply(_:)`` work, run once the reply is queued.
        var afterReply: [@Sendable () async -> Void] = []
    }

    struct Lifecycle {
        var closeWaiters: [UnsafeContinuation<Void, Never>] = []
        var closed = false
        var remoteSaidGoodbye = false
        var closedLocally = false
    }

    init(transport: any FrameTransport, router: Router?, configuration: Configuration, remote: Hello, codec: PayloadCodec) {
        self.transport = transport
        self.router = router
        self.configuration = configuration
        self.remoteName = remote.name
        self.remotePID = Int32(bitPattern: remote.pid)
        self.remoteMaxFrameSize = Int(remote.maxFrameSize)
        self.codec = codec
        self.inbox = Inbox(capacity: configuration.inboxCapacity, byteCapacity: configuration.inboxByteCapacity)
        self.inbox.transport = transport
    }

    /// An executor that runs tasks on the thread serving this connection.
    ///
    /// A task that prefers it (`withTaskExecutorPreference(peer.executor) { … }`)
    /// sends and receives without a thread hop: the fastest way to make many calls.
    public var executor: any TaskExecutor { self.transport.executor }

    /// Whether this connection runs over shared-memory rings (both sides on one
    /// host allowed it; see ``SharedMemoryOptions``) rather than its socket.
    public var isSharedMemory: Bool { self.transport.isSharedMemory }

    #if os(Linux)
    /// For tests that play a hostile peer: the shared memory of the ring this side
    /// writes (which the other side reads), or nil on a socket.
    package var outboundRingMemoryForTesting: UnsafeMutableRawBufferPointer? {
        (self.transport as? SharedMemoryTransport)?.outboundMemory
    }
    #endif

    // MARK: Waiting for calls

    /// Returns once no call this side made is waiting for its reply (every one
    /// answered, failed, timed out or cancelled).
    ///
    /// - Throws: ``IntercomError/Code/timeout`` if calls are still pending after `timeout`.
    public func waitForOutstandingCalls(timeout: Duration) async throws(IntercomError) {
        let id = self.calls.withLock { table -> UInt64 in
            table.nextDrainWaiter += 1
            return table.nextDrainWaiter
        }
        let timer = Locked<Task<Void, Never>?>(nil)
        let drained = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let registered = self.calls.withLock { table -> Bool in
                if table.pending.isEmpty { return false }
                table.drainWaiters[id] = continuation
                return true
            }
            guard registered else {
                continuation.resume(returning: true)
                return
            }
            // Armed only once the waiter is registered, so it cannot fire too early to find it.
            timer.withLock {
                $0 = Task {
                    try? await Task.sleep(for: timeout)
                    let waiter = self.calls.withLock { $0.drainWaiters.removeValue(forKey: id) }
                    waiter?.resume(returning: false)
                }
            }
        }
        timer.withLock { $0?.cancel() }
        guard drained else {
            let left = self.calls.withLock { $0.pending.count }
            throw IntercomError(.timeout, "\(left) call(s) to '\(self.remoteName)' still pending after \(timeout)")
        }
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
    }

    /// What is in flight right now.
    public var statistics: Statistics {
        let pending = self.calls.withLock { $0.pending.count }
        let (running, queued) = self.handlers.withLock { ($0.active, $0.queued.count) }
        return Statistics(
            pendingCalls: pending, runningHandlers: running, queuedCalls: queued,
            blockedSenders: self.transport.blockedSenders,
            lateReplies: self.lateReplies.load(ordering: .relaxed))
    }

    // MARK: Closing

    /// Says goodbye, flushes what is queued and closes the connection. Pending calls
    /// fail with ``IntercomError/Code/closed``. Returns when the connection is closed.
    public func close() async {
        let first = self.lifecycle.withLock { state -> Bool in
            defer { state.closedLocally = true }
            return !state.closedLocally
        }
        if first {
            self.endCalls(IntercomError(.closed, "this side closed the connection", context: .init(peer: self.remoteName)))
            self.transport.send(FrameHeader.empty(kind: .goodbye, id: 0))
            self.transport.close()
        }
        await self.waitUntilClosed()
    }

    /// Returns when the connection has ended, whoever ended it.
    public func waitUntilClosed() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let closed = self.lifecycle.withLock { state -> Bool in
                if state.closed { return true }
                state.closeWaiters.append(continuation)
                return false
            }
            if closed { continuation.resume() }
        }
    }

    /// Whether the connection has ended.
    public var isClosed: Bool { self.lifecycle.withLock { $0.closed } }

    /// Fails every pending call with `error` and refuses new ones.
    func endCalls(_ error: IntercomError) {
        let (orphans, timers) = self.calls.withLock { table -> ([UInt64: PendingCall], [any ScheduledWork]) in
            if table.ended == nil { table.ended = error }
            defer {
                table.pending.removeAll()
                for waiter in table.takeDrainWaitersIfIdle() { waiter.resume(returning: true) }
            }
            return (table.pending, table.timer.takeArmed())
        }
        for timer in timers { timer.cancel() }
        for (id, call) in orphans {
            call.continuation?.resume(throwing: error.with(.init(method: call.method, callID: id, peer: self.remoteName)))
        }
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

    init() { self.messages.initialize(to: []) }

    deinit {
        self.messages.deinitialize(count: 1)
        self.messages.deallocate()
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

/// A call waiting for its reply. Fields are guarded by the peer's call-table lock.
final class PendingCall: @unchecked Sendable {
    var continuation: UnsafeContinuation<Frame, any Error>?
    let method: String?
    let timeout: Duration
    let deadline: ContinuousClock.Instant
    var cancelled = false

    init(method: String?, timeout: Duration, deadline: ContinuousClock.Instant) {
        self.method = method
        self.timeout = timeout
        self.deadline = deadline
    }
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
