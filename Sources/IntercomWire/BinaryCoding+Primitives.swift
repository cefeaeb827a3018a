#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import NIOCore

// The binary format (docs/PROTOCOL.md, "Binary codec"):
// - Bool, Int8, UInt8: one byte. Other integers: LEB128 varints (signed ones zigzag).
// - Float, Double: IEEE 754 bits, little-endian. String: varint length + UTF-8.
// - Optional: one presence byte (0 or 1), then the value.
// - Array, Set: varint count + elements; [UInt8], Data and ByteBuffer: varint length + raw bytes.
// - Dictionary: varint count + (key, value) pairs. UUID: 16 raw bytes. Date: Double
//   seconds since 1970. URL: its absolute string.
// - Keyed container: u32 entry count + (key, value) entries; a key is a varint tag
//   (int key n: zigzag(n) << 1 | 1; string key: utf8 length << 1) then the string bytes.
//   A nil field is an absent entry. Unkeyed container: u32 count + values.

/// Values with a binary form of their own, bypassing the generic container path.
protocol BinaryEncodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws
}

/// Values with a binary form of their own, bypassing the generic container path.
protocol BinaryDecodableSpecial {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Self
}

/// Fixed-form scalars that containers write directly.
protocol BinaryPrimitive: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func write(to buffer: inout ByteBuffer)
    static func read(from decoder: BinaryDecoderImpl) throws -> Self
}

extension BinaryPrimitive {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws { self.write(to: &encoder.buffer) }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Self { try Self.read(from: decoder) }
}

extension ByteBuffer {
    @inline(__always)
    mutating func writeVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            self.writeInteger(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        self.writeInteger(UInt8(value))
    }

    /// Writes `bytes` after their count as a varint, in one access to the
    /// storage (two writes, each checked, cost more than the copy of a small payload).
    mutating func writeLengthPrefixed(_ bytes: UnsafeRawBufferPointer) {
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: bytes.count + 10) { out in
            storeLengthPrefixed(bytes, in: out, at: 0)
        }
    }

    /// Reads a LEB128 varint; `nil` if truncated or longer than 64 bits.
    @inline(__always)
    mutating func readVarint() -> UInt64? {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        let start = self.readerIndex
        while let byte = self.readInteger(as: UInt8.self) {
            if shift == 63 && byte > 1 { break }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { break }
        }
        self.moveReaderIndex(to: start)
        return nil
    }
}

@inline(__always) func zigzag(_ value: Int64) -> UInt64 { UInt64(bitPattern: (value << 1) ^ (value >> 63)) }
@inline(__always) func unzigzag(_ value: UInt64) -> Int64 { Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1) }

extension Bool: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) { buffer.writeInteger(self ? 1 : 0 as UInt8) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Bool {
        switch try decoder.readByte(for: Bool.self) {
        case 0: return false
        case 1: return true
        case let other: throw decoder.corrupted("a Bool must be 0 or 1, found \(other)")
        }
    }
}

extension Int8: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) { buffer.writeInteger(self) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Int8 { Int8(bitPattern: try decoder.readByte(for: Int8.self)) }
}

extension UInt8: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) { buffer.writeInteger(self) }
    static func read(from decoder: BinaryDecoderImpl) throws -> UInt8 { try decoder.readByte(for: UInt8.self) }
}

/// Multi-byte signed integers travel as zigzag varints.
protocol BinaryVarintSigned: BinaryPrimitive, FixedWidthInteger, SignedInteger {}
extension BinaryVarintSigned {
    func write(to buffer: inout ByteBuffer) { buffer.writeVarint(zigzag(Int64(self))) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Self {
        let raw = unzigzag(try decoder.readVarint(for: Self.self))
        guard let value = Self(exactly: raw) else { throw decoder.corrupted("\(raw) does not fit in \(Self.self)") }
        return value
    }
}
extension Int: BinaryVarintSigned {}
extension Int16: BinaryVarintSigned {}
extension Int32: BinaryVarintSigned {}
extension Int64: BinaryVarintSigned {}

/// Multi-byte unsigned integers travel as varints.
protocol BinaryVarintUnsigned: BinaryPrimitive, FixedWidthInteger, UnsignedInteger {}
extension BinaryVarintUnsigned {
    func write(to buffer: inout ByteBuffer) { buffer.writeVarint(UInt64(self)) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Self {
        let raw = try decoder.readVarint(for: Self.self)
        guard let value = Self(exactly: raw) else { throw decoder.corrupted("\(raw) does not fit in \(Self.self)") }
        return value
    }
}
extension UInt: BinaryVarintUnsigned {}
extension UInt16: BinaryVarintUnsigned {}
extension UInt32: BinaryVarintUnsigned {}
extension UInt64: BinaryVarintUnsigned {}

extension Float: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) { buffer.writeInteger(self.bitPattern, endianness: .little) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Float {
        guard let bits = decoder.buffer.readInteger(endianness: .little, as: UInt32.self) else {
            throw decoder.truncated(Float.self)
        }
        return Float(bitPattern: bits)
    }
}

extension Double: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) { buffer.writeInteger(self.bitPattern, endianness: .little) }
    static func read(from decoder: BinaryDecoderImpl) throws -> Double {
        guard let bits = decoder.buffer.readInteger(endianness: .little, as: UInt64.self) else {
            throw decoder.truncated(Double.self)
        }
        return Double(bitPattern: bits)
    }
}

extension String: BinaryPrimitive {
    func write(to buffer: inout ByteBuffer) {
        buffer.writeVarint(UInt64(self.utf8.count))
        buffer.writeString(self)
    }
    static func read(from decoder: BinaryDecoderImpl) throws -> String {
        let length = try decoder.readLength(for: String.self, limit: decoder.limits.maxStringLength, what: "string")
        guard let bytes = decoder.buffer.readSlice(length: length) else { throw decoder.truncated(String.self) }
        guard let string = String(validating: bytes.readableBytesView, as: UTF8.self) else {
            throw decoder.corrupted("a String of \(length) bytes is not valid UTF-8")
        }
        return string
    }
}

extension Optional: BinaryEncodableSpecial where Wrapped: Encodable {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        switch self {
        case .none: encoder.buffer.writeInteger(0 as UInt8)
        case .some(let wrapped):
            encoder.buffer.writeInteger(1 as UInt8)
            try encoder.encodeValue(wrapped)
        }
    }
}

extension Optional: BinaryDecodableSpecial where Wrapped: Decodable {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Wrapped? {
        switch try decoder.readByte(for: Self.self) {
        case 0: return nil
        case 1: return try decoder.decodeValue(Wrapped.self)
        case let other: throw decoder.corrupted("an Optional's presence byte must be 0 or 1, found \(other)")
        }
    }
}

extension Array: BinaryEncodableSpecial where Element: Encodable {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        if Element.self == UInt8.self {
            unsafeBitCast(self, to: [UInt8].self).withUnsafeBytes { encoder.buffer.writeLengthPrefixed($0) }
            return
        }
        encoder.buffer.writeVarint(UInt64(self.count))
        for element in self { try encoder.encodeValue(element) }
    }
}

extension Array: BinaryDecodableSpecial where Element: Decodable {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> [Element] {
        if Element.self == UInt8.self {
            let length = try decoder.readLength(for: Self.self, limit: decoder.limits.maxCollectionCount, what: "byte array")
            guard let bytes = decoder.buffer.readBytes(length: length) else { throw decoder.truncated(Self.self) }
            return unsafeBitCast(bytes, to: [Element].self)
        }
        let count = try decoder.readCount(for: Self.self)
        var array = [Element]()
        array.reserveCapacity(Swift.min(count, decoder.buffer.readableBytes))
        for _ in 0..<count { array.append(try decoder.decodeValue(Element.self)) }
        return array
    }
}

extension ContiguousArray: BinaryEncodableSpecial where Element: Encodable {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws { try Array(self).encodeBinary(to: encoder) }
}

extension ContiguousArray: BinaryDecodableSpecial where Element: Decodable {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> ContiguousArray<Element> {
        ContiguousArray(try [Element].decodeBinary(from: decoder))
    }
}

extension Set: BinaryEncodableSpecial where Element: Encodable {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        encoder.buffer.writeVarint(UInt64(self.count))
        for element in self { try encoder.encodeValue(element) }
    }
}

extension Set: BinaryDecodableSpecial where Element: Decodable {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Set<Element> {
        let count = try decoder.readCount(for: Self.self)
        var set = Set<Element>(minimumCapacity: Swift.min(count, decoder.buffer.readableBytes))
        for _ in 0..<count { set.insert(try decoder.decodeValue(Element.self)) }
        return set
    }
}

extension Dictionary: BinaryEncodableSpecial where Key: Encodable, Value: Encodable {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        encoder.buffer.writeVarint(UInt64(self.count))
        for (key, value) in self {
            try encoder.encodeValue(key)
            try encoder.encodeValue(value)
        }
    }
}

extension Dictionary: BinaryDecodableSpecial where Key: Decodable, Value: Decodable {
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> [Key: Value] {
        let count = try decoder.readCount(for: Self.self)
        var dictionary = [Key: Value](minimumCapacity: Swift.min(count, decoder.buffer.readableBytes / 2))
        for _ in 0..<count {
            let key = try decoder.decodeValue(Key.self)
            dictionary[key] = try decoder.decodeValue(Value.self)
        }
        return dictionary
    }
}

extension Data: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        self.withUnsafeBytes { encoder.buffer.writeLengthPrefixed($0) }
    }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Data {
        let length = try decoder.readLength(for: Data.self, limit: decoder.limits.maxCollectionCount, what: "Data")
        guard let data = decoder.buffer.readWithUnsafeReadableBytes({ raw -> (Int, Data?) in
            raw.count >= length ? (length, Data(raw.prefix(length))) : (0, nil)
        }) else { throw decoder.truncated(Data.self) }
        return data
    }
}

/// Raw bytes like `[UInt8]`, but decoded without a copy: a slice of the payload
/// (for a large frame over shared memory, a view of the shared blocks).
extension ByteBuffer: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        encoder.buffer.writeVarint(UInt64(self.readableBytes))
        encoder.buffer.writeImmutableBuffer(self)
    }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> ByteBuffer {
        let length = try decoder.readLength(for: ByteBuffer.self, limit: decoder.limits.maxCollectionCount, what: "ByteBuffer")
        guard let bytes = decoder.buffer.readSlice(length: length) else { throw decoder.truncated(ByteBuffer.self) }
        return bytes
    }
}

extension UUID: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws {
        withUnsafeBytes(of: self.uuid) { _ = encoder.buffer.writeBytes($0) }
    }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> UUID {
        guard let bytes = decoder.buffer.readBytes(length: 16) else { throw decoder.truncated(UUID.self) }
        var uuid: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &uuid) { $0.copyBytes(from: bytes) }
        return UUID(uuid: uuid)
    }
}

/// Seconds since 1970-01-01 00:00 UTC (Unix time, what other languages count
/// from), not Foundation's 2001 reference date that `Date`'s own `Codable` uses.
extension Date: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws { self.timeIntervalSince1970.write(to: &encoder.buffer) }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> Date {
        Date(timeIntervalSince1970: try Double.read(from: decoder))
    }
}

extension URL: BinaryEncodableSpecial, BinaryDecodableSpecial {
    func encodeBinary(to encoder: BinaryEncoderImpl) throws { self.absoluteString.write(to: &encoder.buffer) }
    static func decodeBinary(from decoder: BinaryDecoderImpl) throws -> URL {
        let string = try String.read(from: decoder)
        guard let url = URL(string: string) else { throw decoder.corrupted("'\(string)' is not a valid URL") }
        return url
    }
}

/// Stores `bytes` after their count as a varint at `offset` of `out` (which has
/// room for them and 10 bytes more); returns the offset after them. The binary
/// codec's encoding of a byte array.
@inline(__always)
func storeLengthPrefixed(_ bytes: UnsafeRawBufferPointer, in out: UnsafeMutableRawBufferPointer, at start: Int) -> Int {
    var count = UInt64(bytes.count)
    var offset = start
    while count >= 0x80 {
        out[offset] = UInt8(truncatingIfNeeded: count) | 0x80
        count >>= 7
        offset += 1
    }
    out[offset] = UInt8(count)
    offset += 1
    if let source = bytes.baseAddress, bytes.count > 0 {
        out.baseAddress!.advanced(by: offset).copyMemory(from: source, byteCount: bytes.count)
    }
    return offset + bytes.count
}
