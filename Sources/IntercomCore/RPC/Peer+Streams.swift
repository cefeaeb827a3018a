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
    /// producer's handler; a handler that throws ends the iteration with its
    /// error (typed, as for calls); the connection's end ends it with `peerLost`.
    public func stream<Request: Encodable & Sendable, Item: Decodable & Sendable>(
        _ method: String, _ request: Request, of itemType: Item.Type = Item.self, timeout: Duration? = nil
    ) -> CallStream<Item> {
        CallStream(peer: self, method: method, timeout: timeout ?? self.configuration.defaultCallTimeout) { peer, id, timeout in
            _ = try await peer.exchange(method, request, timeout: timeout, id: id, flags: .stream)
        }
    }
}

/// The items of one streaming call (``Peer/stream(_:_:of:timeout:)``).
public struct CallStream<Item: Decodable & Sendable>: AsyncSequence, Sendable {
    /// The items.
    public typealias Element = Item
    let peer: Peer
    let method: String
    let timeout: Duration
    let start: @Sendable (Peer, UInt64, Duration) async throws -> Void

    /// Starts the call and yields its items.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(running: Running(stream: self))
    }

    /// Yields the items; dropping it before the end cancels the call.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let running: Running

        /// The next item, or nil after the last.
        public mutating func next() async throws -> Item? {
            let running = self.running
            // A cancelled consumer cancels the call, which ends the wait with `cancelled`.
            let (item, grant) = try await withTaskCancellationHandler {
                try await running.inbox.next()
            } onCancel: {
                running.cancel()
            }
            if grant > 0 { self.running.peer.sendCredit(grant, for: self.running.id) }
            guard let item else { return nil }
            do {
                return try self.running.peer.codec.decode(Item.self, from: item)
            } catch {
                self.running.cancel()
                throw IntercomError(
                    .invalidPayload, "an item of stream '\(self.running.method)' does not decode as \(Item.self): \(error)",
                    context: .init(method: self.running.method, callID: self.running.id, peer: self.running.peer.remote.name),
                    cause: error)
            }
        }
    }

    /// One running stream: its inbox, and the call task that ends it.
    final class Running: Sendable {
        let peer: Peer
        let method: String
        let id: UInt64
        let inbox = StreamInbox()
        private let call: Task<Void, Never>

        init(stream: CallStream) {
            let peer = stream.peer
            let id = peer.nextCallID.add(1, ordering: .relaxed).oldValue
            let inbox = self.inbox
            self.peer = peer
            self.method = stream.method
            self.id = id
            guard peer.remoteSupportsStreams else {
                inbox.finish(
                    .failure(
                        IntercomError(
                            .incompatiblePeer, "peer '\(peer.remote.name)' does not support streams (an older Intercom)",
                            context: .init(method: stream.method, peer: peer.remote.name))))
                self.call = Task {}
                return
            }
            // Registered before the call is sent, so no item can arrive unrouted.
            peer.streams.withLock { $0.inboxes[id] = inbox }
            let start = stream.start
            let timeout = stream.timeout
            self.call = Task {
                let result: Result<Void, any Error>
                do {
                    try await start(peer, id, timeout)
                    result = .success(())
                } catch {
                    result = .failure(error)
                }
                peer.streams.withLock { _ = $0.inboxes.removeValue(forKey: id) }
                inbox.finish(result)
            }
        }

        /// Stops the call (the producer's handler is cancelled).
        func cancel() { self.call.cancel() }

        deinit {
            // The consumer stopped iterating: the producer need not go on.
            self.call.cancel()
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
        let inbox = StreamInbox()
        self.streams.withLock { $0.inboxes[id] = inbox }
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let call = Task { () throws -> String in
            defer {
                self.streams.withLock { _ = $0.inboxes.removeValue(forKey: id) }
            }
            do {
                let reply = try await self.exchange(
                    method, Optional<Int>.none, timeout: timeout, jsonArgument: json, id: id, flags: .stream)
                inbox.finish(.success(()))
                return reply.payload.readableBytes == 0 ? "null" : String(buffer: reply.payload)
            } catch {
                inbox.finish(.failure(error))
                throw error
            }
        }
        do {
            while true {
                let (next, grant) = try await withTaskCancellationHandler {
                    try await inbox.next()
                } onCancel: {
                    call.cancel()
                }
                if grant > 0 { self.sendCredit(grant, for: id) }
                guard let next else { break }
                item(String(buffer: next))
            }
        } catch {
            call.cancel()
            _ = try? await call.value
            throw error
        }
        return try await call.value
    }
}
