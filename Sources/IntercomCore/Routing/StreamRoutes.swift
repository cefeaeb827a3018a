@_spi(IntercomInternals) public import IntercomTransport
internal import IntercomWire
internal import NIOCore

/// How a streaming handler sends its items (``Router/registerStream(_:_:)``).
public struct StreamWriter<Item: Encodable & Sendable>: Sendable {
    let peer: Peer
    let id: UInt64
    let method: String
    let credit: StreamCredit
    /// JSON for a caller that called with JSON (`intercom call`), else the connection's codec.
    let json: Bool

    /// Sends one item. Suspends while the consumer has not asked for more
    /// (flow control) or the connection's outbound buffer is full.
    ///
    /// - Throws: ``IntercomError`` `cancelled` when the consumer stopped (or the
    ///   handler's deadline passed), `peerLost`/`closed` when the connection
    ///   ended, `invalidPayload` if the item does not encode.
    public func send(_ item: Item) async throws(IntercomError) {
        let context = IntercomError.Context(method: self.method, callID: self.id, peer: self.peer.remote.name)
        // A cancelled producer stops at its next item, credit or not.
        if Task.isCancelled { throw IntercomError(.cancelled, "the stream was cancelled", context: context) }
        let frame = try self.peer.encodeFrame(
            kind: .streamItem, id: self.id, method: nil, timeout: nil, item, context: context,
            codec: self.json ? .json(limits: self.peer.codec.limits) : nil, flags: self.json ? .jsonPayload : [])
        do {
            // Credit counts payload bytes (a stream item has no header extension).
            try await self.credit.acquire(frame.readableBytes - FrameHeader.size)
        } catch let error as IntercomError {
            throw error.with(context)
        } catch {
            throw IntercomError(.cancelled, "the stream was cancelled", context: context)
        }
        try await self.peer.waitUntilWritable(context: context)
        self.peer.transmit(frame)
    }
}

extension Router {
    /// Registers a streaming method: the handler sends any number of items
    /// through its ``StreamWriter`` and returns to end the stream (or throws,
    /// which ends it with that error). Callers use ``Peer/stream(_:_:of:timeout:)``.
    ///
    /// ```swift
    /// try router.registerStream("count") { (n: Int, _, stream: StreamWriter<Int>) in
    ///     for i in 0..<n { try await stream.send(i) }
    /// }
    /// ```
    ///
    /// The handler's task is cancelled when the consumer stops or the call's
    /// deadline passes; ``StreamWriter/send(_:)`` then throws `cancelled`.
    ///
    /// - Throws: as ``register(_:_:)-(_,(Request,CallContext)->Response)``.
    public func registerStream<Request: Decodable & Sendable, Item: Encodable & Sendable>(
        _ method: String, _ handler: @escaping @Sendable (Request, CallContext, StreamWriter<Item>) async throws -> Void
    ) throws(IntercomError) {
        try self.add([
            Route(method) { (request: Request, context: CallContext) async throws in
                let peer = context.peer
                guard context.expectsStream else {
                    throw IntercomError(
                        .invalidPayload, "'\(method)' is a stream: call it with peer.stream(…) (intercom call cannot yet)",
                        context: .init(method: method, callID: context.callID, peer: peer.remote.name))
                }
                // Made when the handler starts, gone when it ends: no credit frame can come
                // sooner (the consumer grants only for items it took), and a stream call that
                // never runs — refused, dropped from the queue — leaves nothing behind.
                let credit = peer.streamStarted(context.callID)
                defer { peer.streamEnded(context.callID) }
                try await handler(request, context, StreamWriter(peer: peer, id: context.callID, method: method, credit: credit, json: context.jsonCaller))
            }
        ])
    }
}
