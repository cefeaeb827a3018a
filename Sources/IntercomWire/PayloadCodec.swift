public import NIOCore
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif

/// Turns `Codable` values into payload bytes and back: the binary coder, JSON,
/// or a codec of the user's (``CustomPayloadCodec``).
///
/// Chosen per connection in the handshake. Both enforce ``WireLimits`` on input
/// (the binary coder field by field; JSON through the frame size limit and
/// Foundation's own nesting limit).
public struct PayloadCodec: Sendable, Equatable {
    /// A custom codec is an index into ``CustomCodecRegistry``: the value stays
    /// trivially copyable, so the built-in codecs pay nothing for custom ones.
    private enum Kind: Sendable, Equatable { case binary, json, custom(Int) }
    private let kind: Kind
    /// The limits enforced when decoding.
    public var limits: WireLimits

    /// The codec's identifier in the handshake (``CodecID/custom`` for any custom codec).
    public var id: CodecID {
        switch self.kind {
        case .binary: .binary
        case .json: .json
        case .custom: .custom
        }
    }

    /// The codec's name: `binary`, `json`, or the custom codec's ``CustomPayloadCodec/name``.
    public var name: String {
        switch self.kind {
        case .binary: "binary"
        case .json: "json"
        case .custom(let index): CustomCodecRegistry.codec(at: index).name
        }
    }

    /// A custom codec (see ``CustomPayloadCodec``).
    public static func custom(_ codec: any CustomPayloadCodec, limits: WireLimits = .defaults) -> PayloadCodec {
        PayloadCodec(kind: .custom(CustomCodecRegistry.index(of: codec)), limits: limits)
    }

    /// Same codec (the limits are not compared).
    public static func == (lhs: PayloadCodec, rhs: PayloadCodec) -> Bool { lhs.kind == rhs.kind }

    /// Whether this is the binary codec (whose encoding of a byte array a frame
    /// writer may produce itself: ``FrameHeader/appendByteArrayFrame(into:kind:flags:id:bytes:)``).
    public var isBinary: Bool { self.kind == .binary }

    /// The compact binary coder (``BinaryEncoder``/``BinaryDecoder``).
    public static func binary(limits: WireLimits = .defaults) -> PayloadCodec { PayloadCodec(kind: .binary, limits: limits) }
    /// JSON through Foundation's coders; dates as ISO 8601 text, bytes as base64.
    public static func json(limits: WireLimits = .defaults) -> PayloadCodec { PayloadCodec(kind: .json, limits: limits) }

    /// The codec named by `id`, or `nil` if this build has none by that id.
    public init?(id: CodecID, limits: WireLimits = .defaults) {
        switch id {
        case .binary: self.init(kind: .binary, limits: limits)
        case .json: self.init(kind: .json, limits: limits)
        default: return nil
        }
    }

    private init(kind: Kind, limits: WireLimits) {
        self.kind = kind
        self.limits = limits
    }

    /// Appends the encoding of `value` to `buffer`.
    /// - Throws: `EncodingError` if the value cannot be encoded.
    public func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
        switch self.kind {
        case .binary:
            try BinaryEncoder().encode(value, into: &buffer)
        case .json:
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys]
            buffer.writeBytes(try encoder.encode(value))
        case .custom(let index):
            try CustomCodecRegistry.codec(at: index).encode(value, into: &buffer)
        }
    }

    /// Decodes a `T` from all of `buffer`.
    /// - Throws: `DecodingError` if the bytes are not a valid encoding of `T`.
    public func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        switch self.kind {
        case .binary:
            return try BinaryDecoder(limits: self.limits).decode(T.self, from: buffer)
        case .json:
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            return try decoder.decode(T.self, from: Data(buffer.readableBytesView))
        case .custom(let index):
            return try CustomCodecRegistry.codec(at: index).decode(T.self, from: buffer, limits: self.limits)
        }
    }
}
