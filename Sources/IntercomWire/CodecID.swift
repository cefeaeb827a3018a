/// Names a payload codec in the handshake (one byte on the wire).
public struct CodecID: Hashable, Sendable, CustomStringConvertible {
    /// The byte on the wire; also the bit index in a hello's codec mask.
    public let rawValue: UInt8
    /// Wraps a raw codec byte.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The compact binary `Codable` coder (``BinaryEncoder``): the default.
    public static let binary = CodecID(rawValue: 1)
    /// JSON (`Foundation.JSONEncoder`): for debugging, the CLI and other languages.
    public static let json = CodecID(rawValue: 2)
    /// A codec named in the hello (``CustomPayloadCodec``): as a preferred codec,
    /// "my custom codecs, in the order listed after my name".
    public static let custom = CodecID(rawValue: 0)

    /// The codec's name (`binary`, `json`).
    public var description: String {
        switch self {
        case .binary: "binary"
        case .json: "json"
        case .custom: "custom"
        default: "codec(\(self.rawValue))"
        }
    }
}
