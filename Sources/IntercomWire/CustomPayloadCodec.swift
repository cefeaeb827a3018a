public import NIOCore
internal import NIOConcurrencyHelpers

/// A payload codec of your own (ductworks' custom serializers): MessagePack,
/// CBOR, a schema-checked format, an encrypting wrapper around another codec.
///
/// Both sides list it in ``Peer/Configuration/customCodecs``; the handshake
/// names it in the hello, and the connection uses it when both sides list it
/// (the name furthest up both lists wins). Otherwise the connection falls back
/// to the built-in codecs, so a peer without it still talks. JSON calls from
/// tools (`intercom call`) keep working beside it.
///
/// ```swift
/// struct PlistCodec: CustomPayloadCodec {
///     let name = "plist"
///     func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
///         buffer.writeBytes(try PropertyListEncoder().encode(value))
///     }
///     func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, limits: WireLimits) throws -> T {
///         try PropertyListDecoder().decode(T.self, from: Data(buffer.readableBytesView))
///     }
/// }
/// configuration.customCodecs = [PlistCodec()]
/// ```
///
/// Every payload is input from a stranger: `decode` must refuse what it cannot
/// read by throwing (the caller gets `invalidPayload`, the connection stays up),
/// and should honour `limits` (nesting, collection sizes) as the built-in coders do.
public protocol CustomPayloadCodec: Sendable {
    /// The codec's name in the hello: 1 to 64 bytes, the same on both sides.
    /// A process keeps the first value of each type and name it meets: a codec
    /// that carries settings should put them in its name or type.
    var name: String { get }
    /// Appends the encoding of `value` to `buffer`.
    func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws
    /// Decodes a `T` from all of `buffer`.
    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, limits: WireLimits) throws -> T
}

/// The custom codecs this process has met, by type and name, each at a fixed index
/// (append-only: an index stays valid for the life of the process).
enum CustomCodecRegistry {
    private static let codecs = NIOLockedValueBox<[any CustomPayloadCodec]>([])

    static func index(of codec: any CustomPayloadCodec) -> Int {
        self.codecs.withLockedValue { codecs in
            if let index = codecs.firstIndex(where: { $0.name == codec.name && type(of: $0) == type(of: codec) }) { return index }
            codecs.append(codec)
            return codecs.count - 1
        }
    }

    static func codec(at index: Int) -> any CustomPayloadCodec {
        self.codecs.withLockedValue { $0[index] }
    }
}
