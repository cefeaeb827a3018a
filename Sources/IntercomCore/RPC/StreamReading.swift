@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore

/// Reads one stream, either way: takes its items from the inbox they arrive in,
/// grants the producer credit as they are handed out, decodes them. What
/// stopping early does depends on the side: the caller of a streaming call
/// cancels the call; a handler reading its input ends the input.
@usableFromInline
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

    /// Fills the empty `cursor` with every item here, waiting for one if none
    /// is; false at the end. Cancelling the reading task stops the stream.
    @usableFromInline
    func refill(_ cursor: inout StreamCursor) async throws -> Bool {
        cursor.ready.removeAll(keepingCapacity: true)
        cursor.index = 0
        while true {
            switch self.inbox.take(into: &cursor.ready) {
            case .items: return true
            case .ended(.success): return false
            case .ended(.failure(let error)): throw error
            case .nothingYet:
                await withTaskCancellationHandler {
                    await self.inbox.wait()
                } onCancel: {
                    self.stop()
                }
            }
        }
    }

    /// Hands out `item`, just taken from `cursor`: grants the producer credit
    /// for what was handed out once enough was. Stops the stream if the reading
    /// task is cancelled — looked at on the first item of each batch taken and
    /// every 64th after (asking the runtime for the current task per item cost
    /// a tenth of the consumer's time at millions of items a second).
    func handOut(_ item: StreamItem, _ cursor: inout StreamCursor) throws {
        if (cursor.index - 1) & 63 == 0, Task.isCancelled {
            self.stop()
            throw IntercomError(
                .cancelled, "the task reading stream '\(self.method)' was cancelled",
                context: .init(method: self.method, callID: self.id, peer: self.peer.remote.name))
        }
        cursor.handedOut += item.payload.readableBytes
        guard cursor.handedOut >= StreamFlow.grantThreshold else { return }
        if self.inbox.grant(cursor.handedOut) { self.peer.sendCredit(cursor.handedOut, for: self.id, flags: self.creditFlags) }
        cursor.handedOut = 0
    }

    /// Hands out `item` (just taken from `cursor`) decoded. An item that does not decode stops the stream.
    @usableFromInline
    func handOut<Item: Decodable>(_ item: StreamItem, as _: Item.Type, _ cursor: inout StreamCursor) throws -> Item {
        try self.handOut(item, &cursor)
        do {
            return try self.codec.decode(Item.self, from: item.payload, descriptors: item.descriptors)
        } catch {
            self.stop()
            throw IntercomError(
                .invalidPayload, "an item of stream '\(self.method)' does not decode as \(Item.self): \(error)",
                context: .init(method: self.method, callID: self.id, peer: self.peer.remote.name), cause: error)
        }
    }

    /// The next item still encoded, or nil after the last (for tools, which show items as they came).
    func nextEncoded(_ cursor: inout StreamCursor) async throws -> StreamItem? {
        if cursor.index == cursor.ready.count, try await !self.refill(&cursor) { return nil }
        let item = cursor.ready[cursor.index]
        cursor.index += 1
        try self.handOut(item, &cursor)
        return item
    }
}

/// A stream iterator's own items: every item that was in the inbox when it last
/// looked, handed out one by one without a lock, an executor switch or a call
/// into the library (this part is inlined into the loop that reads the stream:
/// at millions of items a second those were most of the consumer's time).
@usableFromInline
struct StreamCursor: Sendable {
    @usableFromInline var ready: [StreamItem] = []
    /// The next item of `ready` to hand out.
    @usableFromInline var index = 0
    /// Payload bytes handed out since the last credit grant.
    var handedOut = 0

    @usableFromInline init() {}

    /// The next item of `reader`'s stream, decoded; nil after the last.
    @inlinable
    mutating func next<Item: Decodable>(
        _: Item.Type, from reader: StreamReader, isolation _: isolated (any Actor)? = #isolation
    ) async throws -> Item? {
        if self.index == self.ready.count, try await !reader.refill(&self) { return nil }
        let item = self.ready[self.index]
        self.index += 1
        return try reader.handOut(item, as: Item.self, &self)
    }
}

/// The items of a stream that is already running: a handler's input
/// (``Router/registerClientStream(_:_:)``), or the replies of a bidirectional
/// call (``Peer/bidirectionalStream(_:_:sending:receiving:timeout:_:)``).
///
/// Read it once, in order; items arrive under flow control, so the producer is
/// suspended while nobody reads. Cancelling the reading task stops the stream
/// (seen at once by a reader waiting for items, within 64 items by one that
/// has them already).
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
        @usableFromInline let reader: StreamReader
        @usableFromInline var cursor = StreamCursor()

        init(reader: StreamReader) { self.reader = reader }

        /// The next item, or nil after the last.
        @inlinable
        nonisolated(nonsending) public mutating func next() async throws -> Item? {
            try await self.cursor.next(Item.self, from: self.reader)
        }

        /// The next item, or nil after the last, on the caller's executor (what
        /// `for try await` calls): an item already here costs no executor switch.
        @inlinable
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws -> Item? {
            try await self.cursor.next(Item.self, from: self.reader)
        }
    }
}

/// One call whose answer is a stream: the task that runs the call and ends the
/// inbox when it ends, and the reader of its items. Dropping it cancels the call.
@usableFromInline
final class StreamingCall: Sendable {
    @usableFromInline let reader: StreamReader
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
