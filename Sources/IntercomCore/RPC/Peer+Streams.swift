@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import Synchronization

extension Peer {
    /// Calls a streaming method (registered with ``Router/registerStream(_:_:)``)
    /// and returns its items as they come, typed, with flow control: at most a
    /// few dozen items wait here, and the producer is suspended while this side
    /// does not read (memory stays bounded whatever it does).
    ///
    /// ```swift
    /// for try await line in peer.stream("logs.tail", TailRequest(lines: 100), of: LogLine.self, timeout: .seconds(600)) {
    ///     print(line.text)
    /// }
    /// ```
    ///
    /// The call starts when iteration starts. `timeout` covers the whole stream.
    /// Stopping early (leaving the loop, cancelling the task) cancels the
    /// producer's handler (a cancelled task's loop ends at once when it waits
    /// for items, within 64 items when they are already here); a handler that throws ends the iteration with its
    /// error (typed, as for calls); the connection's end ends it with `peerLost`.
    public func stream<Request: Encodable & Sendable, Item: Decodable & Sendable>(
        _ method: String, _ request: Request, of itemType: Item.Type = Item.self, timeout: Duration? = nil
    ) -> CallStream<Item> {
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        return CallStream(peer: self, method: method) { peer, id in
            try await peer.exchange(method, request, timeout: timeout, id: id, flags: .stream)
        }
    }
}

/// The items of one streaming call (``Peer/stream(_:_:of:timeout:)``).
public struct CallStream<Item: Decodable & Sendable>: AsyncSequence, Sendable {
    /// The items.
    public typealias Element = Item
    let peer: Peer
    let method: String
    /// Sends call `id` (flag `stream`) and returns its final reply.
    let exchange: @Sendable (Peer, UInt64) async throws -> Frame

    /// Starts the call and yields its items.
    public func makeAsyncIterator() -> AsyncIterator {
        let peer = self.peer
        let id = peer.nextCallID.add(1, ordering: .relaxed).oldValue
        let exchange = self.exchange
        return AsyncIterator(
            running: StreamingCall(peer: peer, method: self.method, id: id, codec: peer.codec) { try await exchange(peer, id) })
    }

    /// Yields the items; dropping it before the end cancels the call.
    public struct AsyncIterator: AsyncIteratorProtocol {
        /// What iteration throws.
        public typealias Failure = any Error
        @usableFromInline let running: StreamingCall
        @usableFromInline var cursor = StreamCursor()

        init(running: StreamingCall) { self.running = running }

        /// The next item, or nil after the last. A cancelled consumer cancels the call.
        @inlinable
        nonisolated(nonsending) public mutating func next() async throws -> Item? {
            try await self.cursor.next(Item.self, from: self.running.reader)
        }

        /// The next item, or nil after the last, on the caller's executor (what
        /// `for try await` calls): an item already here costs no executor switch.
        @inlinable
        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws -> Item? {
            try await self.cursor.next(Item.self, from: self.running.reader)
        }
    }
}

extension Peer {
    /// Calls `method` with a JSON argument as a stream when it is one: `item` gets
    /// each item as JSON text; returns the final reply as JSON text (`null` for a
    /// stream, the result for a plain method). For tools (`intercom call`), which
    /// do not know whether a method streams. Falls back to a plain call with a
    /// peer that does not support streams.
    public func callJSONStreaming(
        _ method: String, json: String, timeout: Duration? = nil, item: @Sendable (String) -> Void
    ) async throws -> String {
        guard self.remoteSupportsStreams else { return try await self.callJSON(method, json: json, timeout: timeout) }
        let id = self.nextCallID.add(1, ordering: .relaxed).oldValue
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let running = StreamingCall(peer: self, method: method, id: id, codec: .json(limits: self.codec.limits)) {
            try await self.exchange(method, Optional<Int>.none, timeout: timeout, jsonArgument: json, id: id, flags: .stream)
        }
        do {
            var cursor = StreamCursor()
            while let next = try await running.reader.nextEncoded(&cursor) { item(String(buffer: next.payload)) }
            let reply = try await running.call.value
            return reply.readableBytes == 0 ? "null" : String(buffer: reply)
        } catch {
            running.call.cancel()
            _ = await running.call.result
            throw error
        }
    }
}
