public import IntercomWire
public import NIOCore

/// A call or one-way message as a fallback handler sees it: the method, the
/// context and the still-encoded payload, decoded on demand.
public struct IncomingCall: Sendable {
    /// Who called, which method, and the deadline.
    public let context: CallContext
    /// The payload exactly as it arrived (encoded with ``codec`` unless the sender sent raw bytes).
    public let payload: ByteBuffer
    /// The codec the connection negotiated.
    public let codec: PayloadCodec

    /// The method name the caller used.
    public var method: String { self.context.method }

    /// Decodes the payload as `type`.
    ///
    /// - Throws: ``IntercomError`` with code ``IntercomError/Code/invalidPayload``
    ///   naming the method, the expected type and what did not match.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws(IntercomError) -> T {
        do {
            return try self.codec.decode(T.self, from: self.payload)
        } catch {
            throw IntercomError(
                .invalidPayload,
                "payload of '\(self.method)' does not decode as \(T.self) (\(self.codec.id) codec): \(describeDecodingError(error))",
                context: .init(method: self.method, callID: self.context.callID, peer: self.context.peerName)
            )
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
