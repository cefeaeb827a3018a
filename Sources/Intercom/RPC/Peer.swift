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
    private let calls = Locked(CallTable())
    private let nextCallID = Atomic<UInt64>(1)
    private let lateReplies = Atomic<Int>(0)
    private let handlers = Locked(HandlerTable())
    let inbox: Inbox
    private let lifecycle = Locked(Lifecycle())
    private let arrivals = Arrivals()
    private let subscriptions = Locked(Subscriptions())
    private let remoteTopics = Locked(RemoteTopics())

    /// This side's subscriptions to the other side's events, by topic.
    private struct Subscriptions {
        var byTopic: [String: [ObjectIdentifier: EventQueue]] = [:]
        var ended: IntercomError?
    }

    /// The topics the other side subscribed to, and per topic how many events
    /// were dropped since the last one sent (reported in the next event's id).
    private struct RemoteTopics {
        /// Topic (or `*`, every topic) → whether the subscriber wants JSON payloads.
        var subscribed: [String: Bool] = [:]
        var missed: [String: Int] = [:]

        func subscription(for topic: String) -> Bool? { self.subscribed[topic] ?? self.subscribed["*"] }
    }

    /// Calls this side made and is waiting for.
    private struct CallTable {
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
    private struct HandlerTable {
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
    private static func heldBytes(_ frame: borrowing Frame) -> Int {
        frame.payload.readableBytes + (frame.method?.utf8.count ?? 0) + 256
    }

    private struct RunningHandler {
        let task: Task<Void, Never>
        /// When the caller stops waiting (from the frame's timeout), if it said.
        let deadline: ContinuousClock.Instant?
        /// ``CallContext/afterReply(_:)`` work, run once the reply is queued.
        var afterReply: [@Sendable () async -> Void] = []
    }

    private struct Lifecycle {
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

    // MARK: Calls

    /// Calls `method` on the other side with `request` and returns its reply.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait for the reply (default
    ///     ``Configuration/defaultCallTimeout``). The remaining time travels in the
    ///     frame; the handler's task is cancelled when it runs out.
    /// - Throws: ``IntercomError`` (`timeout`, `peerLost`, `unknownMethod`, `remote`,
    ///   `invalidPayload`, `frameTooLarge`, `cancelled`, `closed`, …), or the handler's
    ///   own error if its type is in ``Configuration/remoteErrors``. Cancelling the
    ///   calling task sends a cancel frame and cancels the handler's task.
    public func call<Request: Encodable, Response: Decodable>(
        _ method: String,
        _ request: Request,
        returning: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> Response {
        let reply = try await self.exchange(method, request, timeout: timeout ?? self.configuration.defaultCallTimeout)
        return try self.codec.decodePayload(
            Response.self, from: reply.payload, what: "reply to '\(method)'",
            context: .init(method: method, callID: reply.id, peer: self.remoteName))
    }

    /// Calls `method` and waits for it to complete, ignoring any reply value.
    ///
    /// - Throws: as ``call(_:_:returning:timeout:)``.
    public func call<Request: Encodable>(_ method: String, _ request: Request, timeout: Duration? = nil) async throws {
        _ = try await self.exchange(method, request, timeout: timeout ?? self.configuration.defaultCallTimeout)
    }

    /// Sends a `ping` frame and returns the round-trip time.
    ///
    /// - Throws: ``IntercomError`` `timeout`, `peerLost` or `closed`.
    public func ping(timeout: Duration = .seconds(5)) async throws -> Duration {
        let start = ContinuousClock.now
        _ = try await self.exchange(nil, Optional<Int>.none, timeout: timeout, kind: .ping)
        return ContinuousClock.now - start
    }

    /// Calls `method` with a JSON argument and returns the JSON reply, whatever
    /// codec the connection uses: the handler decodes the JSON as its typed
    /// request and answers in JSON. For tools (`intercom call`) and scripts.
    ///
    /// - Returns: the reply's JSON text (`null` for a handler without a value).
    /// - Throws: as ``call(_:_:returning:timeout:)``.
    public func callJSON(_ method: String, json: String, timeout: Duration? = nil) async throws -> String {
        let reply = try await self.exchange(
            method, Optional<Int>.none, timeout: timeout ?? self.configuration.defaultCallTimeout, jsonArgument: json)
        return reply.payload.readableBytes == 0 ? "null" : String(buffer: reply.payload)
    }

    /// Sends the frame of one call and waits for the frame that answers it.
    private func exchange<Request: Encodable>(
        _ method: String?, _ request: Request, timeout: Duration, kind: FrameKind = .call, jsonArgument: String? = nil
    ) async throws -> Frame {
        let context = IntercomError.Context(method: method, peer: self.remoteName)
        if let method, method.utf8.count > 255 {
            throw IntercomError(.invalidName, "method name is longer than 255 bytes", context: context)
        }
        guard timeout > .zero else {
            throw IntercomError(.timeout, "call timed out before it was sent (timeout \(timeout))", context: context)
        }
        let pending = PendingCall(method: method, timeout: timeout, deadline: ContinuousClock.now.advanced(by: timeout))
        let id = self.nextCallID.add(1, ordering: .relaxed).oldValue
        let frame: ByteBuffer
        if let jsonArgument {
            var buffer = ByteBuffer()
            let mark = FrameHeader.begin(into: &buffer, kind: .call, flags: .jsonPayload, id: id, method: method, timeout: timeout)
            buffer.writeString(jsonArgument)
            FrameHeader.finish(mark, in: &buffer)
            frame = buffer
        } else if kind == .call {
            frame = try self.encodeFrame(kind: .call, id: id, method: method, timeout: timeout, request, context: context)
        } else {
            frame = FrameHeader.empty(kind: kind, id: id)
        }
        try await self.waitUntilWritable(context: context)

        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Frame, any Error>) in
                let registered = self.calls.withLock { table -> Result<Void, IntercomError> in
                    if let ended = table.ended { return .failure(ended.with(context)) }
                    if pending.cancelled {
                        return .failure(IntercomError(.cancelled, "the calling task was cancelled", context: context))
                    }
                    pending.continuation = continuation
                    table.pending[id] = pending
                    if table.timer.needsTimer(for: pending.deadline) {
                        table.timer.record(self.armCallTimer(at: pending.deadline), at: pending.deadline)
                    }
                    return .success(())
                }
                if case .failure(let error) = registered {
                    continuation.resume(throwing: error)
                    return
                }
                self.transport.send(frame)
            }
        } onCancel: {
            self.cancelCall(id, pending: pending)
        }
    }

    /// Waits for room in the outbound buffer. If the connection ended, throws why
    /// it ended (`peerLost` with the peer's name, or `closed`), not just that it did.
    private func waitUntilWritable(context: IntercomError.Context) async throws(IntercomError) {
        do {
            try await self.transport.waitUntilWritable()
        } catch {
            if let ended = self.calls.withLock({ $0.ended }) { throw ended.with(context) }
            throw error.with(context)
        }
    }

    private func encodeFrame<Value: Encodable>(
        kind: FrameKind, id: UInt64, method: String?, timeout: Duration?, _ value: Value, context: IntercomError.Context,
        codec: PayloadCodec? = nil, flags: FrameFlags = []
    ) throws(IntercomError) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(128)
        try self.appendFrame(
            into: &buffer, kind: kind, id: id, method: method, timeout: timeout, value, context: context, codec: codec,
            flags: flags)
        return buffer
    }

    /// Encodes one frame at the end of `buffer` (several frames may share one buffer
    /// and go out in one write). On error `buffer` holds part of a frame: discard it.
    private func appendFrame<Value: Encodable>(
        into buffer: inout ByteBuffer, kind: FrameKind, id: UInt64, method: String?, timeout: Duration?, _ value: Value,
        context: IntercomError.Context, codec: PayloadCodec? = nil, flags: FrameFlags = []
    ) throws(IntercomError) {
        let mark = FrameHeader.begin(into: &buffer, kind: kind, flags: flags, id: id, method: method, timeout: timeout)
        do {
            try (codec ?? self.codec).encode(value, into: &buffer)
        } catch {
            throw IntercomError(.invalidPayload, "\(Value.self) does not encode: \(error)", context: context)
        }
        let length = FrameHeader.finish(mark, in: &buffer)
        try self.checkPayloadLength(length, of: kind, context: context)
    }

    /// Refuses a payload longer than the other side accepts in one frame.
    private func checkPayloadLength(_ length: Int, of kind: FrameKind, context: IntercomError.Context) throws(IntercomError) {
        guard length <= self.remoteMaxFrameSize else {
            throw IntercomError(
                .frameTooLarge,
                "\(kind) payload of \(length) bytes exceeds the \(self.remoteMaxFrameSize)-byte maximum frame size of peer '\(self.remoteName)'; send it in parts",
                context: context)
        }
    }

    private func armCallTimer(at deadline: ContinuousClock.Instant) -> any ScheduledWork {
        self.transport.schedule(after: deadline - .now) { [weak self] in self?.expireOverdueCalls() }
    }

    /// The call timer fired: fail every call past its deadline, tell their handlers
    /// to stop, and arm the timer for the next deadline.
    private func expireOverdueCalls() {
        let now = ContinuousClock.now
        let overdue = self.calls.withLock { table -> [(UInt64, PendingCall)] in
            table.timer.fired(at: now)
            var overdue: [(UInt64, PendingCall)] = []
            var next: ContinuousClock.Instant?
            for (id, call) in table.pending {
                if call.deadline <= now {
                    overdue.append((id, call))
                } else if next.map({ call.deadline < $0 }) ?? true {
                    next = call.deadline
                }
            }
            for (id, _) in overdue { table.pending.removeValue(forKey: id) }
            if let next, table.timer.needsTimer(for: next) { table.timer.record(self.armCallTimer(at: next), at: next) }
            for waiter in table.takeDrainWaitersIfIdle() { waiter.resume(returning: true) }
            return overdue
        }
        for (id, call) in overdue {
            self.sendCancel(id)
            call.continuation?.resume(
                throwing: IntercomError(
                    .timeout, "no reply from '\(self.remoteName)' within \(call.timeout)",
                    context: .init(method: call.method, callID: id, peer: self.remoteName)))
        }
    }

    private func cancelCall(_ id: UInt64, pending: PendingCall) {
        let call = self.calls.withLock { table -> PendingCall? in
            pending.cancelled = true
            defer { for waiter in table.takeDrainWaitersIfIdle() { waiter.resume(returning: true) } }
            return table.pending.removeValue(forKey: id)
        }
        guard let call else { return }
        self.sendCancel(id)
        call.continuation?.resume(
            throwing: IntercomError(
                .cancelled, "the calling task was cancelled; the handler was told to stop",
                context: .init(method: call.method, callID: id, peer: self.remoteName)))
    }

    private func sendCancel(_ id: UInt64) {
        self.transport.send(FrameHeader.empty(kind: .cancel, id: id))
    }

    // MARK: One-way messages

    /// Sends a one-way message: no reply, no acknowledgement. If the other side has
    /// a handler for `method` it runs; otherwise the message waits in its inbox for
    /// ``receive(as:timeout:)`` / ``messages(as:)``.
    ///
    /// Suspends while the outbound buffer is full (the other side is not reading).
    ///
    /// - Throws: ``IntercomError`` `closed`/`peerLost`, `frameTooLarge`, `invalidPayload`.
    public func send<Message: Encodable>(_ method: String, _ message: Message) async throws(IntercomError) {
        try await self.sendMessage(method: method, message)
    }

    /// Sends a one-way message without a method name; it lands in the other side's inbox.
    ///
    /// - Throws: as ``send(_:_:)``.
    public func send<Message: Encodable>(_ message: Message) async throws(IntercomError) {
        try await self.sendMessage(method: nil, message)
    }

    private func sendMessage<Message: Encodable>(method: String?, _ message: Message) async throws(IntercomError) {
        let context = IntercomError.Context(method: method, peer: self.remoteName)
        if let method, method.utf8.count > 255 {
            throw IntercomError(.invalidName, "method name is longer than 255 bytes", context: context)
        }
        let frame = try self.encodeFrame(kind: .message, id: 0, method: method, timeout: nil, message, context: context)
        while !self.transport.sendIfWritable(frame) {
            // Over the watermark, or closed (then this throws closed/peerLost).
            try await self.waitUntilWritable(context: context)
        }
    }

    /// Sends one-way messages in order, as ``send(_:_:)`` would one by one, but
    /// encoded together and handed to the connection in few writes: one lock and
    /// one wake-up of the other side for many messages, the fastest way to stream.
    /// The other side receives each as its own message.
    ///
    /// All messages are encoded before the first is sent: if one does not encode,
    /// none is sent. Suspends while the outbound buffer is full.
    ///
    /// - Throws: as ``send(_:_:)``.
    public func send<Message: Encodable>(_ method: String, contentsOf messages: some Sequence<Message>)
        async throws(IntercomError)
    {
        try await self.sendMessages(method: method, messages)
    }

    /// Sends one-way messages without a method name, in order and in few writes;
    /// each lands in the other side's inbox as its own message.
    ///
    /// - Throws: as ``send(_:_:)``.
    public func send<Message: Encodable>(contentsOf messages: some Sequence<Message>) async throws(IntercomError) {
        try await self.sendMessages(method: nil, messages)
    }

    /// Bytes per write of a batch: large enough that the write's fixed cost
    /// vanishes, small enough that a long batch does not stall other senders.
    private static let batchChunkSize = 64 << 10

    private func sendMessages<Message: Encodable>(method: String?, _ messages: some Sequence<Message>)
        async throws(IntercomError)
    {
        let context = IntercomError.Context(method: method, peer: self.remoteName)
        if let method, method.utf8.count > 255 {
            throw IntercomError(.invalidName, "method name is longer than 255 bytes", context: context)
        }
        // Encode every payload first (nothing is sent if one fails), then frame
        // and send them a chunk at a time.
        var batch = FrameBatch(kind: .message, method: method)
        let encoded: Result<Void, IntercomError>? = messages.withContiguousStorageIfAvailable { messages in
            // The common case (an array or a slice of one): indexing a buffer
            // costs nothing where a generic iterator allocates per element.
            Result { () throws(IntercomError) in
                for message in messages { try self.append(message, to: &batch, context: context) }
            }
        }
        if let encoded {
            try encoded.get()
        } else {
            for message in messages { try self.append(message, to: &batch, context: context) }
        }
        while !batch.isFullyWritten {
            var chunk = ByteBuffer()
            batch.writeFrames(into: &chunk, maxBytes: Self.batchChunkSize)
            while !self.transport.sendIfWritable(chunk) {
                try await self.waitUntilWritable(context: context)
            }
        }
    }

    /// Encodes `message` as the payload of the next frame of `batch`.
    private func append<Message: Encodable>(
        _ message: Message, to batch: inout FrameBatch, context: IntercomError.Context
    ) throws(IntercomError) {
        let length: Int
        do {
            length = try batch.append(message, codec: self.codec)
        } catch {
            throw IntercomError(.invalidPayload, "\(Message.self) does not encode: \(error)", context: context)
        }
        try self.checkPayloadLength(length, of: .message, context: context)
    }

    /// Waits for the next unsolicited message and decodes it as `type`.
    ///
    /// Messages that arrived before the connection ended are delivered first; then
    /// this throws ``IntercomError/Code/peerLost`` (or `closed` if this side closed).
    ///
    /// - Throws: ``IntercomError`` `timeout` if nothing arrives within `timeout`,
    ///   `invalidPayload` if the message is not a `type` (the message is consumed).
    public func receive<T: Decodable>(as type: T.Type = T.self, timeout: Duration? = nil) async throws(IntercomError) -> T {
        let message = try await self.receiveMessage(timeout: timeout)
        return try message.decode(as: T.self)
    }

    /// Waits for the next unsolicited message, still encoded.
    ///
    /// - Throws: as ``receive(as:timeout:)``.
    public func receiveMessage(timeout: Duration? = nil) async throws(IntercomError) -> InboundMessage {
        try await self.inbox.next(timeout: timeout)
    }

    /// How many messages ``receiveMessages(limit:timeout:)`` returns at most unless told otherwise.
    public static let defaultReceiveLimit = 1024

    /// Waits for at least one unsolicited message, then returns every message already
    /// queued, up to `limit`, in arrival order: one wake-up for a burst of messages,
    /// the fastest way to drain a busy inbox.
    ///
    /// - Throws: as ``receive(as:timeout:)``.
    public func receiveMessages(limit: Int = Peer.defaultReceiveLimit, timeout: Duration? = nil) async throws(IntercomError) -> [InboundMessage] {
        try await self.inbox.nextBatch(limit: limit, timeout: timeout)
    }

    /// The unsolicited messages as an `AsyncSequence`, each decoded as `type`. The
    /// sequence throws when the connection ends (after the last message that arrived).
    public func messages<T: Decodable>(as type: T.Type = T.self) -> MessageSequence<T> {
        MessageSequence(peer: self)
    }

    // MARK: Events

    /// Subscribes to the other side's events on `topic`.
    ///
    /// Events wait in a queue of `bufferSize`; when it is full, `overflow` decides:
    /// drop the oldest and deliver ``EventDelivery/lagged(missed:)``, or end the
    /// subscription. The connection keeps reading either way, so a slow subscriber
    /// never holds up the publisher or its calls.
    public func events<Value: Decodable & Sendable>(
        _ topic: String, as type: Value.Type = Value.self, bufferSize: Int = 1024,
        overflow: EventOverflowPolicy = .dropOldest
    ) -> EventSubscription<Value> {
        EventSubscription(queue: self.subscribe(topic, bufferSize: bufferSize, overflow: overflow, json: false), peer: self)
    }

    /// Subscribes to the other side's events on `topic` (`*`: every topic) as JSON
    /// text, whatever codec the connection uses: for tools like `intercom watch`.
    /// Use a connection of its own for it (typed subscriptions to the same topics
    /// on the same connection take precedence and arrive in the connection's codec).
    public func jsonEvents(_ topic: String = "*", bufferSize: Int = 1024) -> JSONEventSubscription {
        JSONEventSubscription(queue: self.subscribe(topic, bufferSize: bufferSize, overflow: .dropOldest, json: true), peer: self)
    }

    private func subscribe(_ topic: String, bufferSize: Int, overflow: EventOverflowPolicy, json: Bool) -> EventQueue {
        let queue = EventQueue(topic: topic, capacity: bufferSize, policy: overflow)
        let first = self.subscriptions.withLock { table -> Bool? in
            if let ended = table.ended {
                queue.end(ended)
                return nil
            }
            let first = table.byTopic[topic] == nil
            table.byTopic[topic, default: [:]][ObjectIdentifier(queue)] = queue
            return first
        }
        if first == true {
            var frame = ByteBuffer()
            let mark = FrameHeader.begin(into: &frame, kind: .subscribe, flags: json ? .jsonPayload : [], id: 0, method: topic)
            FrameHeader.finish(mark, in: &frame)
            self.transport.send(frame)
        }
        return queue
    }

    /// Ends one subscription; the other side is told when its topic has no subscriber left.
    func unsubscribe(_ queue: EventQueue) {
        let last = self.subscriptions.withLock { table -> Bool in
            guard table.byTopic[queue.topic]?.removeValue(forKey: ObjectIdentifier(queue)) != nil else { return false }
            if table.byTopic[queue.topic]?.isEmpty == true {
                table.byTopic[queue.topic] = nil
                return table.ended == nil
            }
            return false
        }
        queue.end(IntercomError(.closed, "unsubscribed from '\(queue.topic)'"))
        if last {
            var frame = ByteBuffer()
            let mark = FrameHeader.begin(into: &frame, kind: .unsubscribe, id: 0, method: queue.topic)
            FrameHeader.finish(mark, in: &frame)
            self.transport.send(frame)
        }
    }

    /// Publishes an event to the other side if it subscribes to `topic`. Never
    /// waits: if the connection's outbound buffer is full the event is dropped and
    /// the subscriber learns how many it missed with the next event it gets.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` if `value` does not encode,
    ///   `frameTooLarge` if it is over the other side's limit.
    @discardableResult
    public func publish<Value: Encodable>(_ topic: String, _ value: Value) throws(IntercomError) -> PublishOutcome {
        guard let json = self.subscriptionFormat(for: topic) else { return .notSubscribed }
        let codec = json ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        return try self.publishEncoded(topic, payload: Self.encodeEvent(value, with: codec, topic: topic), json: json)
    }

    /// An event's payload encoded with `codec`.
    static func encodeEvent<Value: Encodable>(_ value: Value, with codec: PayloadCodec, topic: String)
        throws(IntercomError) -> ByteBuffer
    {
        var payload = ByteBuffer()
        do {
            try codec.encode(value, into: &payload)
        } catch {
            throw IntercomError(.invalidPayload, "\(Value.self) does not encode: \(error)", context: .init(method: topic))
        }
        return payload
    }

    /// Whether the other side subscribes to `topic` (or to every topic).
    public func isSubscribed(to topic: String) -> Bool {
        self.subscriptionFormat(for: topic) != nil
    }

    /// How the other side subscribed to `topic`: nil if it did not, true if it asked for JSON.
    func subscriptionFormat(for topic: String) -> Bool? {
        self.remoteTopics.withLock { $0.subscription(for: topic) }
    }

    /// Publishes an already-encoded event (one encoding for many subscribers).
    func publishEncoded(_ topic: String, payload: ByteBuffer, json: Bool = false) throws(IntercomError) -> PublishOutcome {
        guard payload.readableBytes <= self.remoteMaxFrameSize else {
            throw IntercomError(
                .frameTooLarge,
                "event of \(payload.readableBytes) bytes exceeds the \(self.remoteMaxFrameSize)-byte maximum frame size of peer '\(self.remoteName)'",
                context: .init(method: topic, peer: self.remoteName))
        }
        return self.remoteTopics.withLock { state -> PublishOutcome in
            guard state.subscription(for: topic) != nil else { return .notSubscribed }
            let missed = state.missed[topic] ?? 0
            var frame = ByteBuffer()
            frame.reserveCapacity(FrameHeader.size + 3 + topic.utf8.count + payload.readableBytes)
            let mark = FrameHeader.begin(
                into: &frame, kind: .event, flags: json ? .jsonPayload : [], id: UInt64(missed), method: topic)
            var body = payload
            frame.writeBuffer(&body)
            FrameHeader.finish(mark, in: &frame)
            if self.transport.sendIfWritable(frame) {
                state.missed[topic] = nil
                return .sent
            }
            state.missed[topic] = missed + 1
            return .dropped
        }
    }

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
    private func endCalls(_ error: IntercomError) {
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
private final class Arrivals: @unchecked Sendable {
    // Touched only on the transport's thread (receive / endOfReadBatch / transportClosed).
    private let messages = UnsafeMutablePointer<[InboundMessage]>.allocate(capacity: 1)

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
private final class PendingCall: @unchecked Sendable {
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

// MARK: - Receiving frames

extension Peer: FrameReceiver {
    func transportActive() {}

    /// The connection drained after being full: tell subscribers what they missed
    /// now, rather than with the next event (which may never come).
    func transportWritable() {
        self.remoteTopics.withLock { state in
            for (topic, missed) in state.missed where missed > 0 {
                var frame = ByteBuffer()
                let mark = FrameHeader.begin(into: &frame, kind: .event, flags: .lagNotice, id: UInt64(missed), method: topic)
                FrameHeader.finish(mark, in: &frame)
                if self.transport.sendIfWritable(frame) { state.missed[topic] = nil }
            }
        }
    }

    func receive(_ frame: consuming Frame) {
        switch frame.kind {
        case .reply, .error, .pong:
            self.complete(frame)
        case .call:
            self.accept(frame)
        case .message:
            if let method = frame.method, let router, router.hasOwnHandler(for: method) {
                self.accept(frame)
            } else {
                // Collected until the end of this read, then queued under one lock.
                let collected = self.arrivals.append(InboundMessage(method: frame.method, payload: frame.payload, codec: self.codec))
                // Batches no larger than what `receiveMessages()` takes by default pass
                // through the inbox whole.
                if collected >= Self.defaultReceiveLimit { self.flushArrivals() }
            }
        case .cancel:
            self.handlers.withLock { $0.running[frame.id] }?.task.cancel()
        case .ping:
            self.transport.send(FrameHeader.empty(kind: .pong, id: frame.id))
        case .goodbye:
            self.lifecycle.withLock { $0.remoteSaidGoodbye = true }
        case .event:
            self.deliverEvent(frame)
        case .subscribe:
            if let topic = frame.method {
                self.remoteTopics.withLock { $0.subscribed[topic] = frame.flags.contains(.jsonPayload) }
            }
        case .unsubscribe:
            if let topic = frame.method {
                self.remoteTopics.withLock { state in
                    state.subscribed[topic] = nil
                    state.missed[topic] = nil
                }
            }
        default:
            // hello twice, welcome, subscribe, …: not part of this version's conversation.
            self.transportFailed(ProtocolError(.malformedHeader, "unexpected \(frame.kind) frame after the handshake"))
            self.transport.close()
        }
    }

    /// An event arrived: hand it to every local subscription of its topic.
    private func deliverEvent(_ frame: Frame) {
        guard let topic = frame.method else { return }
        let queues = self.subscriptions.withLock { table -> [EventQueue] in
            var queues: [EventQueue] = []
            if let exact = table.byTopic[topic] { queues.append(contentsOf: exact.values) }
            if let all = table.byTopic["*"] { queues.append(contentsOf: all.values) }
            return queues
        }
        let missed = Int(clamping: frame.id)
        if frame.flags.contains(.lagNotice) {
            for queue in queues { queue.addMissed(missed) }
            return
        }
        for queue in queues where !queue.append(topic: topic, frame.payload, missedBefore: missed) {
            // Overflowed under `.disconnect`: the subscription is over.
            self.unsubscribe(queue)
        }
    }

    func endOfReadBatch() {
        self.flushArrivals()
    }

    /// Hands the messages collected so far to the inbox. The array itself moves
    /// (the inbox keeps it as one batch), so each message is not copied again.
    private func flushArrivals() {
        guard !self.arrivals.isEmpty else { return }
        self.inbox.append(contentsOf: self.arrivals.takeAll())
    }

    /// A reply, error or pong for a call of ours.
    private func complete(_ frame: Frame) {
        if frame.id == 0, frame.kind == .error {
            // An error about the whole connection: the other side is about to close it.
            let body = try? ErrorBody(from: frame.payload)
            self.configuration.logger.warning(
                "peer reported a connection error", metadata: ["peer": "\(self.remoteName)", "error": "\(body?.message ?? "?")"])
            return
        }
        let (removed, drained) = self.calls.withLock { table in
            (table.pending.removeValue(forKey: frame.id), table.takeDrainWaitersIfIdle())
        }
        for waiter in drained { waiter.resume(returning: true) }
        guard let call = removed else {
            // Late reply (the call timed out or was cancelled): dropped.
            self.lateReplies.add(1, ordering: .relaxed)
            return
        }
        guard let continuation = call.continuation else { return }
        if frame.kind == .error {
            continuation.resume(throwing: self.remoteError(from: frame, method: call.method))
        } else {
            continuation.resume(returning: frame)
        }
    }

    private func remoteError(from frame: Frame, method: String?) -> any Error {
        let context = IntercomError.Context(method: method, callID: frame.id, peer: self.remoteName)
        guard let body = try? ErrorBody(from: frame.payload) else {
            return IntercomError(.protocolViolation, "error frame from '\(self.remoteName)' does not parse", context: context)
        }
        if frame.flags.contains(.typedError), let decode = self.configuration.remoteErrors.decoders[body.typeName],
            let error = try? decode(body.details, self.codec)
        {
            return error
        }
        return IntercomError(
            IntercomError.Code(wireName: body.code), body.message, context: context,
            remoteType: body.typeName.isEmpty ? nil : body.typeName)
    }

    func transportFailed(_ error: ProtocolError) {
        self.configuration.logger.warning(
            "protocol violation; closing the connection", metadata: ["peer": "\(self.remoteName)", "error": "\(error)"])
        self.endCalls(IntercomError(error, peer: self.remoteName))
    }

    func transportClosed() {
        self.endOfReadBatch()
        let (goodbye, local) = self.lifecycle.withLock { ($0.remoteSaidGoodbye, $0.closedLocally) }
        let error: IntercomError
        if local {
            error = IntercomError(.closed, "this side closed the connection", context: .init(peer: self.remoteName))
        } else {
            let how = goodbye ? "closed the connection" : "went away without saying goodbye (exited, crashed or was killed)"
            error = IntercomError(
                .peerLost, "peer '\(self.remoteName)' (pid \(self.remotePID)) \(how)", context: .init(peer: self.remoteName))
        }
        self.endCalls(error)
        self.inbox.end(error)
        let queues = self.subscriptions.withLock { table -> [EventQueue] in
            table.ended = error
            defer { table.byTopic.removeAll() }
            return table.byTopic.values.flatMap { $0.values }
        }
        for queue in queues { queue.end(error) }
        let (handlers, release, timers) = self.handlers.withLock { table -> ([RunningHandler], Bool, [any ScheduledWork]) in
            table.ended = true
            table.queued.removeAll()
            return (Array(table.running.values), table.takeMemoryToRelease(), table.timer.takeArmed())
        }
        for timer in timers { timer.cancel() }
        if release { ReleasedMemory.handBack() }
        for handler in handlers { handler.task.cancel() }
        let waiters = self.lifecycle.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.closed = true
            defer { state.closeWaiters.removeAll() }
            return state.closeWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Serving calls

    /// A call (or routed message) arrived: run it now or queue it behind the handler limit.
    ///
    /// On the transport's thread. Past the call-queue limit or the byte budget the
    /// connection stops reading (the sender's backpressure); the pause is applied
    /// here, on the transport's thread, every time a call arrives over the limit,
    /// so a resume posted from a finishing handler can never leave it reading past
    /// the budget for more than one read.
    private func accept(_ frame: Frame) {
        let pause = self.handlers.withLock { table -> Bool in
            if table.ended { return false }
            table.bytes += Self.heldBytes(frame)
            table.peakBytes = max(table.peakBytes, table.bytes)
            if table.active < self.configuration.maxConcurrentHandlers {
                table.active += 1
                self.startHandler(frame, table: &table)
            } else {
                table.queued.append(frame)
            }
            guard table.isOverLimit(self.configuration) else { return false }
            table.paused = true
            return true
        }
        if pause { self.transport.setReadingPaused(true, reason: .callQueueFull) }
    }

    /// Starts the task for one call. Runs under the handler-table lock, so the task
    /// is in `running` before it can finish and remove itself.
    private func startHandler(_ frame: Frame, table: inout HandlerTable) {
        let arrival = ContinuousClock.now
        let deadline = frame.timeout.map { arrival.advanced(by: $0) }
        let method = frame.method ?? ""
        let context = CallContext(
            method: method, callID: frame.id, deadline: deadline, timeout: frame.timeout, peerName: self.remoteName,
            peerPID: self.remotePID, peer: self)
        let codec = frame.flags.contains(.jsonPayload) ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        let call = IncomingCall(context: context, payload: frame.payload, codec: codec)
        let isCall = frame.kind == .call
        let executor: (any TaskExecutor)? =
            self.configuration.handlerExecution == .connectionThread ? self.transport.executor : nil
        let held = Self.heldBytes(frame)
        let task = Task(executorPreference: executor) {
            await self.run(call, isCall: isCall, held: held)
        }
        guard isCall else { return }
        table.running[frame.id] = RunningHandler(task: task, deadline: deadline)
        // The deadline travels in the frame: the handler is cancelled when it passes,
        // even if the caller's cancel frame never comes.
        if let deadline, table.timer.needsTimer(for: deadline) {
            table.timer.record(self.armHandlerTimer(at: deadline), at: deadline)
        }
    }

    private func armHandlerTimer(at deadline: ContinuousClock.Instant) -> any ScheduledWork {
        self.transport.schedule(after: deadline - .now) { [weak self] in self?.cancelOverdueHandlers() }
    }

    /// The handler timer fired: cancel every handler past its caller's deadline and
    /// arm the timer for the next one. (Handlers remove themselves when they end.)
    private func cancelOverdueHandlers() {
        let now = ContinuousClock.now
        let overdue = self.handlers.withLock { table -> [Task<Void, Never>] in
            table.timer.fired(at: now)
            var overdue: [Task<Void, Never>] = []
            var next: ContinuousClock.Instant?
            for handler in table.running.values {
                guard let deadline = handler.deadline else { continue }
                if deadline <= now {
                    if !handler.task.isCancelled { overdue.append(handler.task) }
                } else if next.map({ deadline < $0 }) ?? true {
                    next = deadline
                }
            }
            if let next, table.timer.needsTimer(for: next) { table.timer.record(self.armHandlerTimer(at: next), at: next) }
            return overdue
        }
        for task in overdue { task.cancel() }
    }

    private func run(_ call: IncomingCall, isCall: Bool, held: Int) async {
        let id = call.context.callID
        var reply: ByteBuffer?
        do {
            guard let handler = self.router?.handler(for: call.method) else {
                let registered = self.router?.methods ?? []
                throw IntercomError(
                    .unknownMethod,
                    "peer '\(self.configuration.name)' has no handler for '\(call.method)'"
                        + (registered.isEmpty ? " (it registers no methods)" : "; it handles: \(registered.prefix(20).joined(separator: ", "))"),
                    context: .init(method: call.method, callID: id))
            }
            let value = try await handler(call)
            if isCall {
                reply = try self.encodeReply(value, id: id, method: call.method, codec: call.codec)
            }
        } catch {
            if isCall {
                reply = self.encodeError(Self.deadlineError(error, call.context) ?? error, id: id, method: call.method)
            } else {
                self.configuration.logger.warning(
                    "handler of one-way message failed", metadata: ["method": "\(call.method)", "error": "\(error)"])
            }
        }
        var held = held
        if let reply, !self.transport.sendIfWritable(reply) {
            // Over the watermark: wait for the caller to read (or the connection to
            // end). The waiting reply counts against the byte budget meanwhile.
            let replyBytes = reply.readableBytes
            held += replyBytes
            self.handlers.withLock { $0.bytes += replyBytes }
            try? await self.transport.waitUntilWritable()
            self.transport.send(reply)
        }
        self.handlerFinished(id, isCall: isCall, released: held)
    }

    private func encodeReply(_ value: (any Encodable & Sendable)?, id: UInt64, method: String, codec: PayloadCodec)
        throws -> ByteBuffer
    {
        let context = IntercomError.Context(method: method, callID: id, peer: self.remoteName)
        guard let value else { return FrameHeader.empty(kind: .reply, id: id) }
        // A JSON call (see `callJSON`) is answered in JSON.
        let flags: FrameFlags = codec.id == self.codec.id ? [] : .jsonPayload
        return try self.encodeFrame(
            kind: .reply, id: id, method: nil, timeout: nil, value, context: context, codec: codec, flags: flags)
    }

    /// A handler stopped by its deadline answers `timeout`, not `cancelled`: the
    /// caller's own timer and this reply race, and the caller must see one answer.
    private static func deadlineError(_ error: any Error, _ context: CallContext) -> IntercomError? {
        let cancelled = error is CancellationError || (error as? IntercomError)?.code == .cancelled
        guard cancelled, let deadline = context.deadline, deadline <= .now else { return nil }
        let budget = context.timeout.map { " within \($0)" } ?? ""
        return IntercomError(
            .timeout, "no reply from the handler of '\(context.method)'\(budget): it ran past the caller's deadline")
    }

    private func encodeError(_ error: any Error, id: UInt64, method: String) -> ByteBuffer {
        var body: ErrorBody
        var flags: FrameFlags = []
        switch error {
        case let error as IntercomError:
            body = ErrorBody(code: error.code.name, typeName: error.remoteType ?? "", message: error.message)
        case is CancellationError:
            body = ErrorBody(code: IntercomError.Code.cancelled.name, message: "the handler of '\(method)' was cancelled")
        default:
            body = ErrorBody(
                code: IntercomError.Code.remote.name, typeName: String(reflecting: type(of: error)),
                message: "\(error)")
            if let encodable = error as? any Encodable {
                var details = ByteBuffer()
                if (try? self.codec.encode(encodable, into: &details)) != nil {
                    body.details = details
                    flags.insert(.typedError)
                }
            }
        }
        return body.frame(id: id, flags: flags)
    }

    private func handlerFinished(_ id: UInt64, isCall: Bool, released: Int) {
        let (resume, afterReply) = self.handlers.withLock { table -> (Bool, [@Sendable () async -> Void]) in
            let afterReply = isCall ? table.running.removeValue(forKey: id)?.afterReply ?? [] : []
            table.active -= 1
            table.bytes -= released
            guard !table.ended else {
                if table.takeMemoryToRelease() { ReleasedMemory.handBack() }
                return (false, afterReply)
            }
            if let next = table.queued.popFirst() {
                table.active += 1
                self.startHandler(next, table: &table)
            }
            guard table.paused, !table.isOverLimit(self.configuration) else { return (false, afterReply) }
            table.paused = false
            return (true, afterReply)
        }
        if resume { self.transport.setReadingPaused(false, reason: .callQueueFull) }
        if !afterReply.isEmpty {
            Task { for action in afterReply { await action() } }
        }
    }

    /// Registers ``CallContext/afterReply(_:)`` work for call `id` (at once for a
    /// one-way message, which has no reply, or a call no longer running).
    func afterReply(to id: UInt64, _ action: @escaping @Sendable () async -> Void) {
        let registered = self.handlers.withLock { table -> Bool in
            guard id != 0, table.running[id] != nil else { return false }
            table.running[id]!.afterReply.append(action)
            return true
        }
        if !registered { Task { await action() } }
    }
}

