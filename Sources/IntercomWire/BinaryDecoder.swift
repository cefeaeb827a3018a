public import NIOCore

/// Decodes values written by ``BinaryEncoder``, enforcing ``WireLimits``.
///
/// Every failure — truncated input, a field that is not the expected one,
/// out-of-range numbers, invalid UTF-8, nesting or lengths over the limits,
/// trailing bytes — is a `DecodingError` saying what was found; the decoder
/// never traps and never allocates more than the input can justify.
public struct BinaryDecoder: Sendable {
    /// The limits enforced while decoding.
    public var limits: WireLimits

    /// Creates a decoder enforcing `limits`.
    public init(limits: WireLimits = .defaults) {
        self.limits = limits
    }

    /// Decodes a `T` that fills `buffer` exactly.
    /// - Throws: `DecodingError` if the bytes are not a valid encoding of `T`.
    public func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
        // A whole payload that is one byte array — streamed chunks, echoed bytes — is
        // read without a decoder object or a protocol-conformance lookup (which cost
        // more than the copy for small payloads). It accepts exactly what the general
        // path accepts; anything else goes that way (and gets its error there).
        if T.self == [UInt8].self, let bytes = Self.wholeByteArray(buffer, limit: self.limits.maxCollectionCount) {
            return unsafeBitCast(bytes, to: T.self)
        }
        let impl = BinaryDecoderImpl(buffer: buffer, limits: self.limits)
        let value = try impl.decodeValue(T.self)
        guard impl.buffer.readableBytes == 0 else {
            throw impl.corrupted("\(impl.buffer.readableBytes) unexpected bytes after a complete \(T.self)")
        }
        return value
    }
}

extension BinaryDecoder {
    /// The bytes of a payload that is exactly one length-prefixed byte array
    /// within `limit`; nil otherwise.
    @inline(__always)
    static func wholeByteArray(_ buffer: ByteBuffer, limit: Int) -> [UInt8]? {
        // One look at the bytes, one copy into the new array: no copy of the
        // buffer, no reads that each check and move an index.
        buffer.withUnsafeReadableBytes { raw -> [UInt8]? in
            var length: UInt64 = 0
            var offset = 0
            var shift: UInt64 = 0
            while true {
                guard offset < raw.count, offset < 10 else { return nil }
                let byte = raw[offset]
                offset += 1
                if shift == 63 && byte > 1 { return nil }  // past 64 bits, as `readVarint` refuses
                length |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { break }
                shift += 7
            }
            guard length <= UInt64(limit), length == UInt64(raw.count - offset) else { return nil }
            return [UInt8](UnsafeRawBufferPointer(rebasing: raw[offset...]))
        }
    }
}

/// Shared read position of one keyed container (copies of the container share it).
final class KeyedCursor {
    var remaining: Int
    init(remaining: Int) { self.remaining = remaining }
}

final class BinaryDecoderImpl: Decoder {
    var buffer: ByteBuffer
    let limits: WireLimits
    var depth = 0
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// The keyed container opened by the value being decoded, if any.
    var openKeyed: KeyedCursor?
    var openUnkeyed: BinaryUnkeyedDecodingContainer.Cursor?

    init(buffer: ByteBuffer, limits: WireLimits) {
        self.buffer = buffer
        self.limits = limits
    }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        self.depth += 1
        defer { self.depth -= 1 }
        guard self.depth <= self.limits.maxNestingDepth else {
            throw self.corrupted("nesting deeper than \(self.limits.maxNestingDepth) levels (at \(T.self))")
        }
        if let special = T.self as? any BinaryDecodableSpecial.Type {
            return try special.decodeBinary(from: self) as! T
        }
        let saved = (self.openKeyed, self.openUnkeyed)
        self.openKeyed = nil
        self.openUnkeyed = nil
        defer { (self.openKeyed, self.openUnkeyed) = saved }
        let start = self.buffer.readerIndex
        let value = try T(from: self)
        if self.openKeyed == nil, self.openUnkeyed == nil, self.buffer.readerIndex == start,
            self.buffer.getInteger(at: start, endianness: .little, as: UInt32.self) == 0
        {
            // A type without stored properties: its synthesised `encode(to:)` opens an
            // (empty) keyed container, its synthesised `init(from:)` opens none. Skip
            // the empty container's count so what follows lines up.
            self.buffer.moveReaderIndex(forwardBy: 4)
        }
        return value
    }

    // MARK: Errors

    func corrupted(_ message: String) -> DecodingError {
        DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: message))
    }

    func truncated(_ type: Any.Type) -> DecodingError {
        self.corrupted("input ends inside a \(type) (\(self.buffer.readableBytes) bytes left)")
    }

    // MARK: Reading

    @inline(__always)
    func readByte(for type: Any.Type) throws -> UInt8 {
        guard let byte = self.buffer.readInteger(as: UInt8.self) else { throw self.truncated(type) }
        return byte
    }

    @inline(__always)
    func readVarint(for type: Any.Type) throws -> UInt64 {
        guard let value = self.buffer.readVarint() else {
            throw self.buffer.readableBytes == 0 || self.buffer.readableBytes < 10
                ? self.truncated(type) : self.corrupted("a varint in a \(type) is longer than 64 bits")
        }
        return value
    }

    /// Reads a byte length for `what`, checked against `limit` and the bytes left.
    func readLength(for type: Any.Type, limit: Int, what: String) throws -> Int {
        let raw = try self.readVarint(for: type)
        guard raw <= UInt64(limit) else { throw self.corrupted("\(what) length \(raw) exceeds the limit of \(limit)") }
        guard raw <= UInt64(self.buffer.readableBytes) else {
            throw self.corrupted("\(what) length \(raw) exceeds the \(self.buffer.readableBytes) bytes left")
        }
        return Int(raw)
    }

    /// Reads an element count, checked against the collection limit.
    func readCount(for type: Any.Type) throws -> Int {
        let raw = try self.readVarint(for: type)
        guard raw <= UInt64(self.limits.maxCollectionCount) else {
            throw self.corrupted("\(type) count \(raw) exceeds the limit of \(self.limits.maxCollectionCount)")
        }
        return Int(raw)
    }

    func readContainerCount() throws -> Int {
        guard let count = self.buffer.readInteger(endianness: .little, as: UInt32.self) else {
            throw self.truncated(UInt32.self)
        }
        guard count <= self.limits.maxCollectionCount else {
            throw self.corrupted("container count \(count) exceeds the limit of \(self.limits.maxCollectionCount)")
        }
        return Int(count)
    }

    /// The number of bytes the next key takes if it is `key`, else `nil`. Consumes nothing.
    func matchKey(_ key: some CodingKey) -> Int? {
        var probe = self.buffer
        guard let tag = probe.readVarint() else { return nil }
        if tag & 1 == 1 {
            guard let int = key.intValue, unzigzag(tag >> 1) == Int64(int) else { return nil }
            return self.buffer.readableBytes - probe.readableBytes
        }
        guard key.intValue == nil, tag >> 1 <= UInt64(probe.readableBytes) else { return nil }
        let length = Int(tag >> 1)
        let matches = probe.withUnsafeReadableBytes { raw in
            key.stringValue.utf8.elementsEqual(UnsafeRawBufferPointer(rebasing: raw.prefix(length)))
        }
        return matches ? self.buffer.readableBytes - probe.readableBytes + length : nil
    }

    /// The next key, read without consuming it: an int or a string.
    func peekKey() -> (int: Int?, string: String?) {
        var probe = self.buffer
        guard let tag = probe.readVarint() else { return (nil, nil) }
        if tag & 1 == 1 { return (Int(truncatingIfNeeded: unzigzag(tag >> 1)), nil) }
        guard tag >> 1 <= UInt64(min(probe.readableBytes, 1 << 16)),
            let bytes = probe.readSlice(length: Int(tag >> 1))
        else { return (nil, nil) }
        return (nil, String(decoding: bytes.readableBytesView, as: UTF8.self))
    }

    func describeNextKey() -> String {
        let key = self.peekKey()
        if let int = key.int { return "key \(int)" }
        if let string = key.string { return "field '\(string)'" }
        return "no valid key"
    }

    // MARK: Decoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        let cursor: KeyedCursor
        if let open = self.openKeyed {
            cursor = open
        } else {
            cursor = KeyedCursor(remaining: try self.readContainerCount())
            self.openKeyed = cursor
        }
        return KeyedDecodingContainer(BinaryKeyedDecodingContainer<Key>(decoder: self, cursor: cursor))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let cursor: BinaryUnkeyedDecodingContainer.Cursor
        if let open = self.openUnkeyed {
            cursor = open
        } else {
            cursor = .init(count: try self.readContainerCount())
            self.openUnkeyed = cursor
        }
        return BinaryUnkeyedDecodingContainer(decoder: self, cursor: cursor)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        BinarySingleValueDecodingContainer(decoder: self)
    }
}

/// Optionals in keyed containers are absent entries when nil, plain values otherwise.
protocol OptionalFieldEncodable {
    var wrappedForField: (any Encodable)? { get }
}

extension Optional: OptionalFieldEncodable where Wrapped: Encodable {
    var wrappedForField: (any Encodable)? { self.map { $0 as any Encodable } }
}

protocol OptionalFieldDecodable {
    static func decodeField(from decoder: BinaryDecoderImpl, present: Bool) throws -> Self
}

extension Optional: OptionalFieldDecodable where Wrapped: Decodable {
    static func decodeField(from decoder: BinaryDecoderImpl, present: Bool) throws -> Wrapped? {
        present ? try decoder.decodeValue(Wrapped.self) : nil
    }
}

struct BinaryKeyedDecodingContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: BinaryDecoderImpl
    let cursor: KeyedCursor
    var codingPath: [any CodingKey] { [] }

    /// Entries are read in order, so only the next key is known without decoding
    /// its value; that is all synthesized `Codable` enums ask for.
    var allKeys: [Key] {
        guard self.cursor.remaining > 0 else { return [] }
        let next = self.decoder.peekKey()
        if let int = next.int { return Key(intValue: int).map { [$0] } ?? [] }
        if let string = next.string { return Key(stringValue: string).map { [$0] } ?? [] }
        return []
    }

    func contains(_ key: Key) -> Bool {
        self.cursor.remaining > 0 && self.decoder.matchKey(key) != nil
    }

    private func consume(_ key: Key) throws {
        guard self.cursor.remaining > 0 else {
            throw DecodingError.keyNotFound(
                key, .init(codingPath: [], debugDescription: "field '\(key.stringValue)' is missing (no fields left)")
            )
        }
        guard let length = self.decoder.matchKey(key) else {
            throw DecodingError.keyNotFound(
                key,
                .init(
                    codingPath: [],
                    debugDescription: "expected field '\(key.stringValue)' but found \(self.decoder.describeNextKey())"
                )
            )
        }
        self.decoder.buffer.moveReaderIndex(forwardBy: length)
        self.cursor.remaining -= 1
    }

    private func primitive<T: BinaryPrimitive>(_ type: T.Type, _ key: Key) throws -> T {
        try self.consume(key)
        return try T.read(from: self.decoder)
    }

    func decodeNil(forKey key: Key) throws -> Bool { !self.contains(key) }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try self.primitive(type, key) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try self.primitive(type, key) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try self.primitive(type, key) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try self.primitive(type, key) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try self.primitive(type, key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try self.primitive(type, key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try self.primitive(type, key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try self.primitive(type, key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try self.primitive(type, key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try self.primitive(type, key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try self.primitive(type, key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try self.primitive(type, key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try self.primitive(type, key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try self.primitive(type, key) }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        if let optional = T.self as? any OptionalFieldDecodable.Type {
            let present = self.contains(key)
            if present { try self.consume(key) }
            return try optional.decodeField(from: self.decoder, present: present) as! T
        }
        try self.consume(key)
        return try self.decoder.decodeValue(T.self)
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard self.contains(key) else { return nil }
        try self.consume(key)
        return try self.decoder.decodeValue(T.self)
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        try self.consume(key)
        let cursor = KeyedCursor(remaining: try self.decoder.readContainerCount())
        return KeyedDecodingContainer(BinaryKeyedDecodingContainer<NestedKey>(decoder: self.decoder, cursor: cursor))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try self.consume(key)
        return BinaryUnkeyedDecodingContainer(
            decoder: self.decoder, cursor: .init(count: try self.decoder.readContainerCount())
        )
    }

    func superDecoder() throws -> any Decoder { try self.superDecoder(forKey: Key(stringValue: "super")!) }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        try self.consume(key)
        self.decoder.openKeyed = nil
        self.decoder.openUnkeyed = nil
        return self.decoder
    }
}

struct BinaryUnkeyedDecodingContainer: UnkeyedDecodingContainer {
    final class Cursor {
        let count: Int
        var index = 0
        init(count: Int) { self.count = count }
    }

    let decoder: BinaryDecoderImpl
    let cursor: Cursor
    var codingPath: [any CodingKey] { [] }
    var count: Int? { self.cursor.count }
    var isAtEnd: Bool { self.cursor.index >= self.cursor.count }
    var currentIndex: Int { self.cursor.index }

    private func next() throws {
        guard !self.isAtEnd else {
            throw self.decoder.corrupted("unkeyed container has only \(self.cursor.count) elements")
        }
        self.cursor.index += 1
    }

    private func primitive<T: BinaryPrimitive>(_ type: T.Type) throws -> T {
        try self.next()
        return try T.read(from: self.decoder)
    }

    mutating func decodeNil() throws -> Bool {
        guard !self.isAtEnd, self.decoder.buffer.getInteger(at: self.decoder.buffer.readerIndex, as: UInt8.self) == 0
        else { return false }
        self.cursor.index += 1
        self.decoder.buffer.moveReaderIndex(forwardBy: 1)
        return true
    }
    mutating func decode(_ type: Bool.Type) throws -> Bool { try self.primitive(type) }
    mutating func decode(_ type: String.Type) throws -> String { try self.primitive(type) }
    mutating func decode(_ type: Double.Type) throws -> Double { try self.primitive(type) }
    mutating func decode(_ type: Float.Type) throws -> Float { try self.primitive(type) }
    mutating func decode(_ type: Int.Type) throws -> Int { try self.primitive(type) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try self.primitive(type) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try self.primitive(type) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try self.primitive(type) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try self.primitive(type) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try self.primitive(type) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try self.primitive(type) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try self.primitive(type) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try self.primitive(type) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try self.primitive(type) }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try self.next()
        return try self.decoder.decodeValue(T.self)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try self.next()
        let cursor = KeyedCursor(remaining: try self.decoder.readContainerCount())
        return KeyedDecodingContainer(BinaryKeyedDecodingContainer<NestedKey>(decoder: self.decoder, cursor: cursor))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try self.next()
        return BinaryUnkeyedDecodingContainer(decoder: self.decoder, cursor: .init(count: try self.decoder.readContainerCount()))
    }

    mutating func superDecoder() throws -> any Decoder {
        try self.next()
        self.decoder.openKeyed = nil
        self.decoder.openUnkeyed = nil
        return self.decoder
    }
}

struct BinarySingleValueDecodingContainer: SingleValueDecodingContainer {
    let decoder: BinaryDecoderImpl
    var codingPath: [any CodingKey] { [] }

    private func primitive<T: BinaryPrimitive>(_ type: T.Type) throws -> T { try T.read(from: self.decoder) }

    func decodeNil() -> Bool {
        guard self.decoder.buffer.getInteger(at: self.decoder.buffer.readerIndex, as: UInt8.self) == 0 else {
            return false
        }
        self.decoder.buffer.moveReaderIndex(forwardBy: 1)
        return true
    }
    func decode(_ type: Bool.Type) throws -> Bool { try self.primitive(type) }
    func decode(_ type: String.Type) throws -> String { try self.primitive(type) }
    func decode(_ type: Double.Type) throws -> Double { try self.primitive(type) }
    func decode(_ type: Float.Type) throws -> Float { try self.primitive(type) }
    func decode(_ type: Int.Type) throws -> Int { try self.primitive(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try self.primitive(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try self.primitive(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try self.primitive(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try self.primitive(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try self.primitive(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try self.primitive(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try self.primitive(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try self.primitive(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try self.primitive(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try self.decoder.decodeValue(T.self) }
}
