@_spi(IntercomInternals) public import IntercomTransport
internal import IntercomWire
internal import NIOCore

/// How a stream's producer sends its items: a streaming handler its output
/// (``Router/registerStream(_:_:)``), a caller its call's input
/// (``Peer/clientStream(_:_:sending:returning:timeout:_:)``).
public struct StreamWriter<Item: Encodable & Sendable>: Sendable {
    /// Which stream of its call a writer feeds.
    enum Direction {
        /// The handler's items to its caller.
        case output
        /// The caller's items to the handler (frames flagged `inputStream`).
        case input
    }

    let peer: Peer
    let id: UInt64
    let method: String
    let credit: StreamCredit
    /// JSON for a caller that called with JSON (`intercom call`), else the connection's codec.
    let json: Bool
    let direction: Direction

    /// Sends one item. Suspends while the consumer has not asked for more
    /// (flow control) or the connection's outbound buffer is full.
    ///
    /// - Throws: ``IntercomError`` `cancelled` when the consumer stopped (or the
    ///   deadline passed, or the call ended), `peerLost`/`closed` when the
    ///   connection ended, `invalidPayload` if the item does not encode.
    nonisolated(nonsending) public func send(_ item: Item) async throws(IntercomError) {
        // A cancelled producer stops at its next item, credit or not.
        if Task.isCancelled { throw IntercomError(.cancelled, "the stream was cancelled", context: self.errorContext) }
        let (frame, descriptors) = try self.peer.encodeFrameCarryingDescriptors(
            kind: .streamItem, id: self.id, method: nil, timeout: nil, item, context: self.errorContext,
            codec: self.itemCodec, flags: self.itemFlags)
        // Credit counts payload bytes, as the receiver does.
        try await self.take(FrameHeader.payloadLength(ofFrameIn: frame))
        try await self.peer.waitUntilWritable(context: self.errorContext)
        try self.peer.transmit(frame, descriptors: descriptors)
        if descriptors.isEmpty { self.peer.recycleFrameBuffer(frame) }
    }

    /// Sends many items in order, as ``send(_:)`` would one by one, but encoded
    /// together and handed to the connection in few writes (up to 64 KiB each):
    /// one lock and one wake-up of the consumer for many items — the fastest way
    /// to stream small items. Flow control is the same, item by item; the items
    /// may not hold descriptors (send those one by one).
    ///
    /// - Throws: as ``send(_:)``; items before the one that failed to encode were sent.
    nonisolated(nonsending) public func send(contentsOf items: some Sequence<Item>) async throws(IntercomError) {
        var buffer = ByteBuffer()
        var sizes: [Int] = []
        var iterator = items.makeIterator()
        var position = 0  // in the items' own storage, when they have one
        var exhausted = false
        let frames = StreamItemFrames(peer: self.peer, id: self.id, flags: self.itemFlags, codec: self.itemCodec, context: self.errorContext)
        while !exhausted {
            if Task.isCancelled { throw IntercomError(.cancelled, "the stream was cancelled", context: self.errorContext) }
            // Encode up to 64 KiB of frames, then send them as credit allows.
            buffer.clear()
            sizes.removeAll(keepingCapacity: true)
            let contiguous: Void?
            do {
                // Straight from an array's storage: no iterator, no copy of each item.
                contiguous = try items.withContiguousStorageIfAvailable { storage in
                    while position < storage.count, buffer.readableBytes < Self.batchBytes {
                        try appendStreamItem(storage[position], to: frames, into: &buffer, sizes: &sizes)
                        position += 1
                    }
                    exhausted = position == storage.count
                }
            } catch {
                throw error as? IntercomError ?? IntercomError(.invalidPayload, "an item did not encode: \(error)", context: self.errorContext)
            }
            if contiguous == nil {
                while buffer.readableBytes < Self.batchBytes {
                    guard let item = iterator.next() else {
                        exhausted = true
                        break
                    }
                    try appendStreamItem(item, to: frames, into: &buffer, sizes: &sizes)
                }
            }
            var next = 0
            while next < sizes.count {
                let count: Int
                do {
                    count = try await self.credit.acquire(upTo: sizes[next...])
                } catch let error as IntercomError {
                    throw error.with(self.errorContext)
                } catch {
                    throw IntercomError(.cancelled, "the stream was cancelled", context: self.errorContext)
                }
                let bytes = sizes[next..<(next + count)].reduce(0, +) + count * FrameHeader.size
                try await self.peer.waitUntilWritable(context: self.errorContext)
                self.peer.transmit(buffer.readSlice(length: bytes)!, frames: count)
                next += count
            }
        }
    }

    /// How many bytes of frames ``send(contentsOf:)`` encodes before it sends them.
    private static var batchBytes: Int { 64 << 10 }

    /// The flags of this writer's item frames.
    private var itemFlags: FrameFlags {
        var flags: FrameFlags = self.direction == .input ? .inputStream : []
        if self.json { flags.insert(.jsonPayload) }
        return flags
    }

    /// The codec of its items when not the connection's (JSON for a tool's call).
    private var itemCodec: PayloadCodec? { self.json ? .json(limits: self.peer.codec.limits) : nil }

    /// Ends the items: a later ``send(_:)`` throws. For a call's input, the
    /// handler's sequence ends after the items sent so far (this waits until the
    /// handler started reading, as items do); a client-streaming call does this
    /// when its producer returns. A handler's output ends when the handler
    /// returns, so there it only stops further sends. Calling it twice does nothing.
    ///
    /// - Throws: ``IntercomError`` `cancelled` when the calling task is cancelled
    ///   (the input is then not reported complete), `peerLost`/`closed`.
    public func finish() async throws(IntercomError) {
        guard self.direction == .input else {
            self.credit.end(IntercomError(.closed, "the stream was finished", context: self.errorContext))
            return
        }
        // A cancelled caller is abandoning the call: its input is not complete, and the
        // handler must see the cancellation, not a normal end it could answer.
        if Task.isCancelled { throw IntercomError(.cancelled, "the stream was cancelled", context: self.errorContext) }
        do {
            try await self.take(0)
        } catch let error {
            // The call ended or the input was finished already: nothing to say.
            if error.code == .cancelled || error.code == .closed { return }
            throw error
        }
        guard self.credit.finish() else { return }
        try await self.peer.waitUntilWritable(context: self.errorContext)
        self.peer.sendInputEnd(self.id)
    }

    nonisolated(nonsending) private func take(_ bytes: Int) async throws(IntercomError) {
        do {
            try await self.credit.acquire(bytes)
        } catch let error as IntercomError {
            throw error.with(self.errorContext)
        } catch {
            throw IntercomError(.cancelled, "the stream was cancelled", context: self.errorContext)
        }
    }

    /// What an error of this writer names (made only for an error: per item,
    /// copying the method's and the peer's names was measurable).
    private var errorContext: IntercomError.Context {
        IntercomError.Context(method: self.method, callID: self.id, peer: self.peer.remote.name)
    }
}

/// What every item frame of one ``StreamWriter/send(contentsOf:)`` shares.
private struct StreamItemFrames {
    let peer: Peer
    let id: UInt64
    let flags: FrameFlags
    let codec: PayloadCodec?
    let context: IntercomError.Context
}

/// Appends `item`'s frame to `buffer` and its payload size to `sizes`. A free
/// function, not a method of the generic writer: unspecialised code calling a
/// method of `StreamWriter<Item>` looks up that type's metadata on every call
/// (a sixth of the producer's time per item).
private func appendStreamItem<Item: Encodable>(
    _ item: Item, to frames: StreamItemFrames, into buffer: inout ByteBuffer, sizes: inout [Int]
) throws(IntercomError) {
    let start = buffer.writerIndex
    do {
        try frames.peer.appendFrame(
            into: &buffer, kind: .streamItem, id: frames.id, method: nil, timeout: nil, item, context: frames.context,
            codec: frames.codec, flags: frames.flags)
    } catch where (error.cause as? DescriptorError)?.isMissingAttachments == true {
        throw IntercomError(
            .invalidPayload, "send(contentsOf:) cannot carry descriptors: send items holding a UnixDescriptor one by one with send(_:)",
            context: frames.context)
    }
    sizes.append(buffer.writerIndex - start - FrameHeader.size)
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
                let writer: StreamWriter<Item> = try Self.openOutput(method, context, callWith: "peer.stream(…)")
                defer { context.peer.streamEnded(context.callID) }
                try await handler(request, context, writer)
            }.streaming(.serverStream, item: { $0.shape(ofEncodable: Item.self) })
        ])
    }

    /// Registers a client-streaming method: the handler reads the caller's items
    /// as they come and answers once. Callers use
    /// ``Peer/clientStream(_:_:sending:returning:timeout:_:)``.
    ///
    /// ```swift
    /// try router.registerClientStream("sum") { (_: Int, numbers: StreamItems<Int>, _) -> Int in
    ///     try await numbers.reduce(0, +)
    /// }
    /// ```
    ///
    /// The caller can send only while the handler runs and reads (flow control,
    /// 256 KiB of items at most wait here). Returning before the end of the
    /// items ends the call; items still coming are dropped.
    ///
    /// - Throws: as ``register(_:_:)-(_,(Request,CallContext)->Response)``.
    public func registerClientStream<Request: Decodable & Sendable, Item: Decodable & Sendable, Response: Encodable & Sendable>(
        _ method: String, _ handler: @escaping @Sendable (Request, StreamItems<Item>, CallContext) async throws -> Response
    ) throws(IntercomError) {
        try self.add([
            Route(method) { (request: Request, context: CallContext) async throws -> Response in
                let input = try Self.openInput(method, context)
                defer { context.peer.inputEnded(context.callID) }
                return try await handler(request, StreamItems(reader: input), context)
            }.streaming(.clientStream, input: { $0.shape(of: Item.self) })
        ])
    }

    /// Registers a bidirectional streaming method: the handler reads the caller's
    /// items and sends its own, in any order, and returns to end its stream.
    /// Callers use ``Peer/bidirectionalStream(_:_:sending:receiving:timeout:_:)``.
    ///
    /// ```swift
    /// try router.registerBidirectionalStream("upper") { (_: Int, lines: StreamItems<String>, _, out: StreamWriter<String>) in
    ///     for try await line in lines { try await out.send(line.uppercased()) }
    /// }
    /// ```
    ///
    /// Both ways have flow control; the handler's task is cancelled when the
    /// caller stops or the deadline passes.
    ///
    /// - Throws: as ``register(_:_:)-(_,(Request,CallContext)->Response)``.
    public func registerBidirectionalStream<
        Request: Decodable & Sendable, Input: Decodable & Sendable, Output: Encodable & Sendable
    >(
        _ method: String,
        _ handler: @escaping @Sendable (Request, StreamItems<Input>, CallContext, StreamWriter<Output>) async throws -> Void
    ) throws(IntercomError) {
        try self.add([
            Route(method) { (request: Request, context: CallContext) async throws in
                let writer: StreamWriter<Output> = try Self.openOutput(method, context, callWith: "peer.bidirectionalStream(…)")
                defer { context.peer.streamEnded(context.callID) }
                let input = try Self.openInput(method, context)
                defer { context.peer.inputEnded(context.callID) }
                try await handler(request, StreamItems(reader: input), context, writer)
            }.streaming(
                .bidirectionalStream, item: { $0.shape(ofEncodable: Output.self) }, input: { $0.shape(of: Input.self) })
        ])
    }

    /// The writer of a streaming handler's output, refused when the caller does
    /// not expect a stream. Made when the handler starts, gone when it ends
    /// (the caller's `streamEnded`): no credit frame can come sooner (the consumer
    /// grants only for items it took), and a stream call that never runs —
    /// refused, dropped from the queue — leaves nothing behind.
    private static func openOutput<Item>(_ method: String, _ context: CallContext, callWith how: String)
        throws(IntercomError) -> StreamWriter<Item>
    {
        let peer = context.peer
        guard context.expectsStream else {
            throw IntercomError(
                .invalidPayload, "'\(method)' answers with a stream: call it with \(how)",
                context: .init(method: method, callID: context.callID, peer: peer.remote.name))
        }
        let credit = peer.streamStarted(context.callID)
        return StreamWriter(peer: peer, id: context.callID, method: method, credit: credit, json: context.jsonCaller, direction: .output)
    }

    /// The input of a call to an input-streaming method, refused when the caller sends none.
    private static func openInput(_ method: String, _ context: CallContext) throws(IntercomError) -> StreamReader {
        let peer = context.peer
        guard context.sendsInput else {
            throw IntercomError(
                .invalidPayload, "'\(method)' reads a stream of items: call it with peer.clientStream(…) or peer.bidirectionalStream(…)",
                context: .init(method: method, callID: context.callID, peer: peer.remote.name))
        }
        return peer.inputStarted(context, codec: context.jsonCaller ? .json(limits: peer.codec.limits) : peer.codec)
    }
}
