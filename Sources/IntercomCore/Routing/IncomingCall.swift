public import IntercomTransport
public import IntercomWire
public import NIOCore

/// A call or one-way message as a fallback handler sees it: the method, the
/// context and the still-encoded payload, decoded on demand.
public struct IncomingCall: Sendable {
    /// Who called, which method, and the deadline.
    public let context: CallContext
    /// The payload exactly as it arrived (encoded with ``codec`` unless the sender sent raw bytes).
    public let payload: ByteBuffer
    /// The codec of this payload: the connection's, or JSON for a JSON call (``Peer/callJSON(_:json:timeout:)``).
    public let codec: PayloadCodec
    /// Descriptors that came with the payload (``UnixDescriptor``s decode from them).
    var descriptors: ReceivedDescriptors? = nil
    /// The caller's trace context, if it sent one (tracing on).
    var traceContext: [String: String]? = nil

    /// The method name the caller used.
    public var method: String { self.context.method }

    /// Decodes the payload as `type`.
    ///
    /// - Throws: ``IntercomError`` with code ``IntercomError/Code/invalidPayload``
    ///   naming the method, the expected type and what did not match.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws(IntercomError) -> T {
        try self.codec.decodePayload(
            T.self, from: self.payload, what: "payload of '\(self.method)'",
            context: .init(method: self.method, callID: self.context.callID, peer: self.context.remote.name),
            descriptors: self.descriptors)
    }
}

extension PayloadCodec {
    /// Decodes `type`, turning any failure into ``IntercomError`` `invalidPayload`
    /// that names `what` was decoded, the expected type, the codec and the mismatch.
    func decodePayload<T: Decodable>(
        _ type: T.Type, from buffer: ByteBuffer, what: String, context: IntercomError.Context,
        descriptors: ReceivedDescriptors? = nil
    ) throws(IntercomError) -> T {
        do {
            return try self.decode(T.self, from: buffer, descriptors: descriptors)
        } catch {
            throw IntercomError(
                .invalidPayload,
                "\(what) does not decode as \(T.self) (\(self.id) codec): \(describeDecodingError(error))",
                context: context, cause: error)
        }
    }
}

/// A readable one-line account of a decoding failure.
func describeDecodingError(_ error: any Error) -> String {
    guard let error = error as? DecodingError else { return "\(error)" }
    func path(_ context: DecodingError.Context) -> String {
        let path = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return path.isEmpty ? "" : " at \(path)"
    }
    switch error {
    case .typeMismatch(let type, let context): return "expected \(type)\(path(context)): \(context.debugDescription)"
    case .valueNotFound(let type, let context): return "missing \(type)\(path(context)): \(context.debugDescription)"
    case .keyNotFound(let key, let context): return "missing field '\(key.stringValue)'\(path(context)): \(context.debugDescription)"
    case .dataCorrupted(let context): return "\(context.debugDescription)\(path(context))"
    @unknown default: return "\(error)"
    }
}
