@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore

/// Reads one stream, either way: takes its items from the inbox they arrive in,
/// grants the producer credit as they are taken, decodes them. What stopping
/// early does depends on the side: the caller of a streaming call cancels the
/// call; a handler reading its input ends the input.
final class StreamReader: Sendable {
    let peer: Peer
    let id: UInt64
    let method: String
    let inbox: StreamInbox
    /// The flags of this stream's `credit` frames: none for a call's output,
    /// `inputStream` for its input.
    let creditFlags: FrameFlags
    /// The codec its items come in (JSON for a tool's call).
    let codec: PayloadCodec
    /// Stops the stream from the reading side (no lock held).
    let stop: @Sendable () -> Void

    init(
        peer: Peer, id: UInt64, method: String, inbox: StreamInbox, creditFlags: FrameFlags, codec: PayloadCodec,
        stop: @escaping @Sendable () -> Void
    ) {
        self.peer = peer
        self.id = id
        self.method = method
        self.inbox = inbox
        self.creditFlags = creditFlags
        self.codec = codec
        self.stop = stop
    }

    /// The next item still encoded, or nil after the last. Cancelling the reading task stops the stream.
    func nextEncoded() async throws -> StreamItem? {
        let (item, grant) = try await withTaskCancellationHandler {
            try await self.inbox.next()
        } onCancel: {
            self.stop()
        }
        if grant > 0 { self.peer.sendCredit(grant, for: self.id, flags: self.creditFlags) }
        return item
    }

    /// The next item, or nil after the last. An item that does not decode stops the stream.
    ///
    /// Items already here are taken and decoded without suspending or any further
    /// async call: at millions of items a second, the executor checks of nested
    /// async calls (and a cancellation handler's record) cost more than the rest.
    func next<Item: Decodable>(_: Item.Type) async throws -> Item? {
        if let ready = try self.nextReady(Item.self) { return ready }
        guard let item = try await self.nextEncoded() else { return nil }
        return try self.decode(item, as: Item.self)
    }

    /// The next item if one is here already (nil: wait with ``next(_:)``), synchronously.
    func nextReady<Item: Decodable>(_: Item.Type) throws -> Item? {
        guard let (ready, grant) = self.inbox.takeReady() else { return nil }
        if Task.isCancelled {
            self.stop()
            throw IntercomError(
                .cancelled, "the task reading stream '\(self.method)' was cancelled",
                context: .init(method: self.method, callID: self.id, peer: self.peer.remote.name))
        }
        if grant > 0 { self.peer.sendCredit(grant, for: self.id, flags: self.creditFlags) }
        return try self.decode(ready, as: Item.self)
    }

    private func decode<Item: Decodable>(_ item: StreamItem, as _: Item.Type) throws -> Item {
        do {
            return try self.codec.decode(Item.self, from: item.payload, descriptors: item.descriptors)
        } catch {
            self.stop()
            throw IntercomError(
                .invalidPayload, "an item of stream '\(self.method)' does not decode as \(Item.self): \(error)",
                context: .init(method: self.method, callID: self.id, peer: self.peer.remote.name), cause: error)
        }
    }
}

/// The items of a stream that is already running: a handler's input
/// (``Router/registerClientStream(_:_:)``), or the replies of a bidirectional
/// call (``Peer/bidirectionalStream(_:_:sending:receiving:timeout:_:)``).
///
/// Read it once, in order; items arrive under flow control, so the producer is
/// suspended while nobody reads. Cancelling the reading task stops the stream.
public struct StreamItems<Item: Decodable & Sendable>: AsyncSequence, Sendable {
    /// The items.
    public typealias Element = Item
    let reader: StreamReader

    /// Yields the items.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(reader: self.reader) }

    /// Yields the items, nil after the last; throws the error that ended the stream.
    public struct AsyncIterator: AsyncIteratorProtocol {
        /// What iteration throws.
        public typealias Failure = any Error
        let reader: StreamReader

        /// The next item, or nil after the last.
        nonisolated(nonsending) public mutating func next() async throws -> Item? {
            if let ready = try self.reader.nextReady(Item.self) { return ready }
            return try await self.reader.next(Item.self)
        }

        /// The next item, or nil after the last, on the caller's executor (what
        /// `for try await` calls): an item already here costs no executor switch.
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws -> Item? {
            if let ready = try self.reader.nextReady(Item.self) { return ready }
            return try await self.reader.next(Item.self)
        }
    }
}

/// One call whose answer is a stream: the task that runs the call and ends the
/// inbox when it ends, and the reader of its items. Dropping it cancels the call.
final class StreamingCall: Sendable {
    let reader: StreamReader
    /// The call: the final reply's payload (empty for a stream).
    let call: Task<ByteBuffer, any Error>

    /// Starts call `id` now: `exchange` sends it (flag `stream`) and returns its
    /// final reply. The inbox is registered before the call is sent, so no item arrives unrouted.
    init(
        peer: Peer, method: String, id: UInt64, codec: PayloadCodec,
        exchange: @escaping @Sendable () async throws -> Frame
    ) {
        let inbox = StreamInbox()
        let call: Task<ByteBuffer, any Error>
        if peer.remoteSupportsStreams {
            peer.streams.withLock { $0.inboxes[id] = inbox }
            call = Task {
                defer { peer.streams.withLock { _ = $0.inboxes.removeValue(forKey: id) } }
                do {
                    let reply = try await exchange()
                    inbox.finish(.success(()))
                    return reply.payload
                } catch {
                    inbox.finish(.failure(error))
                    throw error
                }
            }
        } else {
            let refusal = IntercomError(
                .incompatiblePeer, "peer '\(peer.remote.name)' does not support streams (an older Intercom)",
                context: .init(method: method, peer: peer.remote.name))
            inbox.finish(.failure(refusal))
            call = Task { throw refusal }
        }
        self.call = call
        self.reader = StreamReader(peer: peer, id: id, method: method, inbox: inbox, creditFlags: [], codec: codec) {
            call.cancel()
        }
    }

    deinit {
        // The consumer stopped iterating: the producer need not go on.
        self.call.cancel()
    }
}
