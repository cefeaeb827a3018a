import Foundation
public import Intercom
public import NIOCore
public import Synchronization

/// A custom payload codec for the tests (ductworks' custom serializers): JSON
/// behind a 4-byte mark, which it insists on when decoding, and counters of
/// what it encoded and decoded in this process — so a test can tell that the
/// connection really used it.
public struct MarkedJSONCodec: CustomPayloadCodec {
    public static let mark: [UInt8] = Array("MJ1:".utf8)
    public static let encoded = Atomic<Int>(0)
    public static let decoded = Atomic<Int>(0)

    public let name = "marked-json"

    public init() {}

    public func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
        buffer.writeBytes(Self.mark)
        buffer.writeBytes(try JSONEncoder().encode(value))
        Self.encoded.add(1, ordering: .relaxed)
    }

    public func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, limits: WireLimits) throws -> T {
        guard buffer.readableBytesView.starts(with: Self.mark) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "no MJ1: mark: not a marked-json payload"))
        }
        let value = try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView.dropFirst(Self.mark.count)))
        Self.decoded.add(1, ordering: .relaxed)
        return value
    }
}
