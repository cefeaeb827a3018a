public import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import Tracing

// One-way messages: sending (single, batched) and receiving from the inbox.
extension Peer {

    /// Sends a one-way message: no reply, no acknowledgement. If the other side has
    /// a handler for `method` it runs; otherwise the message waits in its inbox for
    /// ``receive(as:timeout:)`` / ``messages(as:)``.
    ///
    /// Suspends while the outbound buffer is full (the other side is not reading).
    ///
    /// - Throws: ``IntercomError`` `closed`/`peerLost`, `frameTooLarge`, `invalidPayload`.
    nonisolated(nonsending) public func send<Message: Encodable>(_ method: String, _ message: Message) async throws(IntercomError) {
        try await self.sendMessage(method: method, message)
    }

    /// Sends a one-way message without a method name; it lands in the other side's inbox.
    ///
    /// - Throws: as ``send(_:_:)``.
    nonisolated(nonsending) public func send<Message: Encodable>(_ message: Message) async throws(IntercomError) {
        try await self.sendMessage(method: nil, message)
    }

    nonisolated(nonsending) func sendMessage<Message: Encodable>(method: String?, _ message: Message) async throws(IntercomError) {
        if let method, method.utf8.count > 255 {
            throw IntercomError(.invalidName, "method name is longer than 255 bytes", context: self.errorContext(method: method))
        }
        // A message is traced as a `producer` span that ends once it is handed over.
        let outgoing = method.flatMap { self.startOutgoingSpan($0, kind: .producer) }
        defer { outgoing?.span.end() }
        let (frame, descriptors) = try self.encodeFrameCarryingDescriptors(
            kind: .message, id: 0, method: method, timeout: nil, message, context: self.errorContext(method: method),
            trace: outgoing?.carrier)
        guard descriptors.isEmpty else {
            try await self.waitUntilWritable(context: self.errorContext(method: method))
            try self.transmit(frame, descriptors: descriptors)
            return
        }
        while !self.transmitIfWritable(frame) {
            // Over the watermark, or closed (then this throws closed/peerLost).
            try await self.waitUntilWritable(context: self.errorContext(method: method))
        }
        self.recycleFrameBuffer(frame)
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
    static let batchChunkSize = 64 << 10

    func sendMessages<Message: Encodable>(method: String?, _ messages: some Sequence<Message>)
        async throws(IntercomError)
    {
        let context = IntercomError.Context(method: method, peer: self.remote.name)
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
            let frames = batch.writeFrames(into: &chunk, maxBytes: Self.batchChunkSize)
            while !self.transmitIfWritable(chunk, frames: frames) {
                try await self.waitUntilWritable(context: context)
            }
        }
    }

    /// Encodes `message` as the payload of the next frame of `batch`.
    func append<Message: Encodable>(
        _ message: Message, to batch: inout FrameBatch, context: IntercomError.Context
    ) throws(IntercomError) {
        let length: Int
        do {
            length = try batch.append(message, codec: self.codec)
        } catch {
            throw IntercomError(.invalidPayload, "\(Message.self) does not encode: \(error)", context: context, cause: error)
        }
        try self.checkPayloadLength(length, of: .message, context: context)
    }

    /// Waits for the next unsolicited message and decodes it as `type`.
    ///
    /// Messages that arrived before the connection ended are delivered first; then
    /// this throws ``IntercomError/Code/peerLost`` (or `closed` if this side closed).
    ///
    /// - Parameter timeout: how long to wait; nil for the connection's
    ///   ``Configuration/defaultReceiveTimeout`` (by default: as long as it takes).
    /// - Throws: ``IntercomError`` `timeout` if nothing arrives in time,
    ///   `invalidPayload` if the message is not a `type` (the message is consumed).
    nonisolated(nonsending) public func receive<T: Decodable>(as type: T.Type = T.self, timeout: Duration? = nil) async throws(IntercomError) -> T {
        let message = try await self.receiveMessage(timeout: timeout)
        return try message.decode(as: T.self)
    }

    /// Waits for the next unsolicited message, still encoded.
    ///
    /// - Throws: as ``receive(as:timeout:)``.
    nonisolated(nonsending) public func receiveMessage(timeout: Duration? = nil) async throws(IntercomError) -> InboundMessage {
        try await self.inbox.next(timeout: timeout ?? self.configuration.defaultReceiveTimeout)
    }

    /// How many messages ``receiveMessages(limit:timeout:)`` returns at most unless told otherwise.
    public static let defaultReceiveLimit = 1024

    /// Waits for at least one unsolicited message, then returns every message already
    /// queued, up to `limit`, in arrival order: one wake-up for a burst of messages,
    /// the fastest way to drain a busy inbox.
    ///
    /// - Throws: as ``receive(as:timeout:)``.
    nonisolated(nonsending) public func receiveMessages(limit: Int = Peer.defaultReceiveLimit, timeout: Duration? = nil) async throws(IntercomError) -> [InboundMessage] {
        try await self.inbox.nextBatch(limit: limit, timeout: timeout ?? self.configuration.defaultReceiveTimeout)
    }

    /// Hands each unsolicited message to `handle`, in order, until one with the
    /// method `quit` arrives (magscope's drain-until-quit); that one is taken
    /// and not handled, and what came after it stays in the inbox.
    ///
    /// ```swift
    /// let handled = try await peer.processMessages(until: "quit") { message in
    ///     try await apply(message.decode(as: Reading.self))
    /// }
    /// ```
    ///
    /// - Parameter timeout: how long to wait for each message (nil: the
    ///   connection's ``Configuration/defaultReceiveTimeout``).
    /// - Returns: how many messages `handle` processed.
    /// - Throws: what `handle` throws (the message it failed on is consumed), or
    ///   as ``receive(as:timeout:)`` when no message comes in time or the
    ///   connection ends before `quit`.
    public func processMessages(
        until quit: String, timeout: Duration? = nil, _ handle: (InboundMessage) async throws -> Void
    ) async throws -> Int {
        var handled = 0
        while true {
            // One at a time: whatever follows `quit` must stay queued.
            let message = try await self.receiveMessage(timeout: timeout)
            if message.method == quit { return handled }
            try await handle(message)
            handled += 1
        }
    }

    /// The unsolicited messages as an `AsyncSequence`, each decoded as `type`. The
    /// sequence throws when the connection ends (after the last message that arrived).
    public func messages<T: Decodable>(as type: T.Type = T.self) -> MessageSequence<T> {
        MessageSequence(peer: self)
    }
}
