@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore

// Descriptors inside values (``UnixDescriptor``): frames that carry them, and
// where they are sent and taken (docs/PROTOCOL.md, "Descriptors").
extension Peer {
    /// Encodes a frame as ``encodeFrame(kind:id:method:timeout:_:context:codec:flags:)``
    /// does, for the kinds a descriptor may travel in (calls, replies, messages,
    /// stream items). Returns the descriptors to send beside it — empty for the
    /// usual value without any, which is encoded once, as before: only a value
    /// that turns out to hold one is encoded again, collecting them.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` when the value holds a
    ///   descriptor and this connection cannot pass them (TCP, TLS, an older
    ///   peer) — before anything is sent.
    func encodeFrameCarryingDescriptors<Value: Encodable>(
        kind: FrameKind, id: UInt64, method: String?, timeout: Duration?, _ value: Value,
        context: @autoclosure () -> IntercomError.Context, codec: PayloadCodec? = nil, flags: FrameFlags = [],
        trace: [String: String]? = nil
    ) throws(IntercomError) -> (frame: ByteBuffer, descriptors: [Int32]) {
        do {
            let frame = try self.encodeFrame(
                kind: kind, id: id, method: method, timeout: timeout, value, context: context(), codec: codec, flags: flags,
                trace: trace)
            return (frame, [])
        } catch where (error.cause as? DescriptorError)?.isMissingAttachments == true {
            guard self.transport.passesDescriptors else {
                throw IntercomError(
                    .invalidPayload,
                    "\(Value.self) holds a UnixDescriptor, and descriptors cannot travel on this connection (\(self.transport.medium)): "
                        + "only between processes of one host (socket pairs and Unix sockets)",
                    context: context())
            }
        }
        let outgoing = OutgoingDescriptors()
        let result: Result<ByteBuffer, IntercomError> = DescriptorAttachments.$outgoing.withValue(outgoing) {
            do throws(IntercomError) {
                return .success(
                    try self.encodeFrame(
                        kind: kind, id: id, method: method, timeout: timeout, value, context: context(), codec: codec,
                        flags: flags.union(.descriptors), trace: trace))
            } catch {
                return .failure(error)
            }
        }
        let frame = try result.get()
        return (frame, outgoing.descriptors)
    }

    /// Queues a frame with its descriptors (none: as ``transmit(_:frames:)``).
    ///
    /// - Throws: as ``FrameTransport/send(_:descriptors:)``: nothing was sent then.
    func transmit(_ frame: ByteBuffer, descriptors: [Int32]) throws(IntercomError) {
        guard !descriptors.isEmpty else {
            self.transmit(frame)
            return
        }
        try self.transport.send(frame, descriptors: descriptors)
        self.sent.add(frames: 1, bytes: frame.readableBytes)
    }
}

extension PayloadCodec {
    /// Decodes `buffer` with the descriptors that came with its frame available
    /// to the ``UnixDescriptor``s in it (those it does not take are closed with the frame).
    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, descriptors: ReceivedDescriptors?) throws -> T {
        guard let descriptors else { return try self.decode(T.self, from: buffer) }
        return try DescriptorAttachments.$incoming.withValue(descriptors) { try self.decode(T.self, from: buffer) }
    }
}

extension Peer {
    /// Whether values on this connection may hold ``UnixDescriptor``s: a
    /// connection between processes of one host (a socket pair or a Unix
    /// socket, on shared memory or not) with a peer recent enough to pass them.
    public var passesDescriptors: Bool { self.transport.passesDescriptors }
}
