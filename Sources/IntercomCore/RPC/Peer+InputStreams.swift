@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import NIOCore
internal import Synchronization

// Input streams: items a caller sends to the handler of its call
// (client-streaming and bidirectional calls; docs/PROTOCOL.md, "Input streams").
extension Peer {
    /// Calls a client-streaming method (``Router/registerClientStream(_:_:)``):
    /// `produce` sends any number of items through its writer, the handler reads
    /// them as they come, and its one result is the call's.
    ///
    /// ```swift
    /// let stored = try await peer.clientStream("files.store", "report.pdf", sending: Chunk.self, returning: Int.self) { upload in
    ///     for chunk in chunks { try await upload.send(chunk) }
    /// }
    /// ```
    ///
    /// Flow control: ``StreamWriter/send(_:)`` suspends while the handler does not
    /// read (its window is 256 KiB of items), and until its handler starts. When
    /// `produce` returns the input ends (the handler's sequence ends); if it
    /// throws, the call is cancelled and its error is thrown. A handler that
    /// answers before reading everything ends the call: `produce` is cancelled
    /// (its next `send` throws `cancelled`) and the answer is returned. `timeout`
    /// covers the whole call.
    ///
    /// - Throws: the handler's error (typed, as for calls), `produce`'s error,
    ///   `incompatiblePeer` if the other side predates input streams, and the
    ///   errors of ``call(_:_:returning:timeout:)``.
    public func clientStream<Request: Encodable & Sendable, Item: Encodable & Sendable, Response: Decodable & Sendable>(
        _ method: String, _ request: Request, sending itemType: Item.Type = Item.self,
        returning responseType: Response.Type = Response.self, timeout: Duration? = nil,
        _ produce: @escaping @Sendable (StreamWriter<Item>) async throws -> Void
    ) async throws -> Response {
        let (id, writer) = try self.openInput(method, of: Item.self)
        defer { self.closeInput(id) }
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let reply = try await withThrowingTaskGroup(of: Frame?.self) { group in
            group.addTask {
                try await produce(writer)
                try await writer.finish()
                return nil
            }
            group.addTask { try await self.exchange(method, request, timeout: timeout, id: id, flags: .inputStream) }
            // The first error (the producer's, or the call's) ends both; the reply ends the producer.
            for try await case let reply? in group {
                group.cancelAll()
                return reply
            }
            throw IntercomError(.closed, "the call ended without an answer", context: .init(method: method, callID: id))
        }
        return try self.codec.decodePayload(
            Response.self, from: reply.payload, what: "reply to '\(method)'",
            context: .init(method: method, callID: id, peer: self.remote.name), descriptors: reply.descriptors)
    }

    /// Calls a bidirectional streaming method (``Router/registerBidirectionalStream(_:_:)``):
    /// `body` sends items through the writer and reads the handler's items as
    /// they come, in any order (typically the sending in a child task).
    ///
    /// ```swift
    /// let answers = try await peer.bidirectionalStream("chat", "room 1", sending: String.self, receiving: String.self) { out, replies in
    ///     try await out.send("hello")
    ///     try await out.finish()
    ///     return try await replies.reduce(into: []) { $0.append($1) }
    /// }
    /// ```
    ///
    /// Both ways have flow control. ``StreamWriter/finish()`` ends the input (the
    /// handler's sequence ends); reading `replies` to its end waits for the
    /// handler to return (and throws its error). When `body` returns, a call
    /// still running is cancelled; `timeout` covers the whole call.
    ///
    /// - Throws: `body`'s error, `incompatiblePeer` if the other side predates
    ///   input streams; the call's own errors come out of `replies`.
    public func bidirectionalStream<
        Request: Encodable & Sendable, Input: Encodable & Sendable, Output: Decodable & Sendable, Result
    >(
        _ method: String, _ request: Request, sending inputType: Input.Type = Input.self,
        receiving outputType: Output.Type = Output.self, timeout: Duration? = nil,
        _ body: (StreamWriter<Input>, StreamItems<Output>) async throws -> Result
    ) async throws -> Result {
        let (id, writer) = try self.openInput(method, of: Input.self)
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let running = StreamingCall(peer: self, method: method, id: id, codec: self.codec) {
            // The input ends with the call, whichever way it ends.
            defer { self.closeInput(id) }
            return try await self.exchange(method, request, timeout: timeout, id: id, flags: [.stream, .inputStream])
        }
        defer { running.call.cancel() }
        return try await body(writer, StreamItems(reader: running.reader))
    }

    /// Registers the input stream of a call about to be made (so the callee's
    /// grants find it), with no credit until the callee's handler starts.
    private func openInput<Item>(_ method: String, of _: Item.Type, json: Bool = false) throws(IntercomError) -> (UInt64, StreamWriter<Item>) {
        guard self.remoteSupportsInputStreams, self.remoteSupportsStreams else {
            throw IntercomError(
                .incompatiblePeer, "peer '\(self.remote.name)' does not support input streams (an older Intercom)",
                context: .init(method: method, peer: self.remote.name))
        }
        let id = self.nextCallID.add(1, ordering: .relaxed).oldValue
        let credit = StreamCredit(initial: 0) { [weak self] in self?.statisticsChanged() }
        self.streams.withLock { $0.inputCredits[id] = credit }
        if let ended = self.withState({ $0.endReason }) { credit.end(ended) }
        return (id, StreamWriter(peer: self, id: id, method: method, credit: credit, json: json, direction: .input))
    }

    /// Calls `method` with a JSON argument and `inputs` (JSON texts) as its input
    /// stream — a client-streaming or bidirectional method — for tools
    /// (`intercom call … --input FILE`), which know neither the method's types nor
    /// whether it streams back: `item` gets each streamed item as JSON text; the
    /// result is the reply as JSON text (`null` for a stream).
    ///
    /// - Throws: `invalidPayload` naming the input that is not JSON (the call is
    ///   cancelled), the handler's error, and the errors of ``callJSON(_:json:timeout:)``.
    public func callJSONStreaming(
        _ method: String, json: String, inputs: some Sequence<String> & Sendable, timeout: Duration? = nil,
        item: @escaping @Sendable (String) -> Void
    ) async throws -> String {
        let (id, writer) = try self.openInput(method, of: JSONValue.self, json: true)
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let running = StreamingCall(peer: self, method: method, id: id, codec: .json(limits: self.codec.limits)) {
            defer { self.closeInput(id) }
            return try await self.exchange(method, Optional<Int>.none, timeout: timeout, jsonArgument: json, id: id, flags: [.stream, .inputStream])
        }
        do {
            return try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask {
                    for (index, text) in inputs.enumerated() {
                        let value: JSONValue
                        do {
                            value = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
                        } catch {
                            throw IntercomError(
                                .invalidPayload, "input \(index + 1) is not JSON: \(text.prefix(80))", context: .init(method: method), cause: error)
                        }
                        do {
                            try await writer.send(value)
                        } catch let error as IntercomError where error.code == .cancelled {
                            return nil  // the handler stopped reading (or answered): its reply, or error, tells the rest
                        }
                    }
                    try await writer.finish()
                    return nil
                }
                group.addTask {
                    var cursor = StreamCursor()
                    while let next = try await running.reader.nextEncoded(&cursor) { item(String(buffer: next.payload)) }
                    let reply = try await running.call.value
                    return reply.readableBytes == 0 ? "null" : String(buffer: reply)
                }
                // The reply ends the producer (a handler may answer before reading everything); an error ends both.
                for try await case let reply? in group {
                    group.cancelAll()
                    return reply
                }
                throw IntercomError(.closed, "the call ended without an answer", context: .init(method: method, callID: id))
            }
        } catch {
            running.call.cancel()
            _ = await running.call.result
            throw error
        }
    }

    /// The call ended: its input's producer can send nothing more.
    private func closeInput(_ id: UInt64) {
        self.streams.withLock { $0.inputCredits.removeValue(forKey: id) }?
            .end(IntercomError(.cancelled, "the call ended; its handler takes no more items"))
    }

    /// A handler that reads its call's input starts: items are accepted from now
    /// on, and the caller gets the initial window. (Items sent before — which a
    /// caller may not do — were dropped: nothing is held for a call not yet running.)
    func inputStarted(_ context: CallContext, codec: PayloadCodec) -> StreamReader {
        let id = context.callID
        let inbox = StreamInbox()
        self.streams.withLock { $0.inputs[id] = inbox }
        if let ended = self.withState({ $0.endReason }) { inbox.finish(.failure(ended)) }
        self.sendCredit(StreamFlow.initialWindow, for: id, flags: .inputStream)
        let method = context.method
        return StreamReader(peer: self, id: id, method: method, inbox: inbox, creditFlags: .inputStream, codec: codec) {
            inbox.finish(.failure(IntercomError(.cancelled, "reading the input of '\(method)' was cancelled")))
        }
    }

    /// The handler that read call `id`'s input ended: later items are dropped.
    func inputEnded(_ id: UInt64) {
        _ = self.streams.withLock { $0.inputs.removeValue(forKey: id) }
    }

    /// A `streamEnd` arrived: the caller sends no more items of call `id`'s input.
    func endInput(_ frame: borrowing Frame) {
        self.streams.withLock { $0.inputs[frame.id] }?.finish(.success(()))
    }

    /// Tells the callee of call `id` that its input is complete.
    func sendInputEnd(_ id: UInt64) {
        self.transmit(FrameHeader.empty(kind: .streamEnd, id: id))
    }
}
