public import NIOCore

/// Encodes `Encodable` values in Intercom's compact binary format.
///
/// Not self-describing: the reader must know the type (Intercom's typed calls
/// do). Field keys are written so that a payload decoded as the wrong type fails
/// with an error naming the field instead of producing garbage. `[UInt8]`,
/// `Data` and `ByteBuffer` are written as raw bytes (a `ByteBuffer` decodes as a
/// slice of the payload, without a copy). The format is specified in docs/PROTOCOL.md.
public struct BinaryEncoder: Sendable {
    /// Creates an encoder.
    public init() {}

    /// Appends the encoding of `value` to `buffer`.
    /// - Throws: `EncodingError` if a value's `encode(to:)` throws.
    public func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
        // Raw bytes are the most common payload: skip the encoder object and the
        // dynamic conformance check (the comparison folds away when specialised).
        if T.self == [UInt8].self {
            let bytes = unsafeBitCast(value, to: [UInt8].self)
            bytes.withUnsafeBytes { buffer.writeLengthPrefixed($0) }
            return
        }
        let impl = BinaryEncoderImpl(buffer: ByteBuffer())
        swap(&impl.buffer, &buffer)
        defer { swap(&impl.buffer, &buffer) }
        try impl.encodeValue(value)
    }

    /// Returns the encoding of `value` in a new buffer.
    /// - Throws: `EncodingError` if a value's `encode(to:)` throws.
    public func encode<T: Encodable>(_ value: T) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try self.encode(value, into: &buffer)
        return buffer
    }
}

final class BinaryEncoderImpl: Encoder {
    var buffer: ByteBuffer
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// Where the count of the keyed (or unkeyed) container opened by the value
    /// being encoded lives, so that asking twice yields the same container.
    var openKeyedCount: Int?
    var openUnkeyedCount: Int?

    init(buffer: ByteBuffer) { self.buffer = buffer }

    func encodeValue<T: Encodable>(_ value: T) throws {
        if let special = value as? any BinaryEncodableSpecial {
            try special.encodeBinary(to: self)
            return
        }
        let saved = (self.openKeyedCount, self.openUnkeyedCount)
        self.openKeyedCount = nil
        self.openUnkeyedCount = nil
        defer { (self.openKeyedCount, self.openUnkeyedCount) = saved }
        try value.encode(to: self)
    }

    func reserveCount() -> Int {
        let index = self.buffer.writerIndex
        self.buffer.writeInteger(UInt32(0), endianness: .little)
        return index
    }

    @inline(__always)
    func bumpCount(at index: Int) {
        let count = self.buffer.getInteger(at: index, endianness: .little, as: UInt32.self)!
        self.buffer.setInteger(count &+ 1, at: index, endianness: .little)
    }

    func writeKey(_ key: some CodingKey) {
        if let int = key.intValue {
            self.buffer.writeVarint(zigzag(Int64(int)) << 1 | 1)
        } else {
            let string = key.stringValue
            self.buffer.writeVarint(UInt64(string.utf8.count) << 1)
            self.buffer.writeString(string)
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let index: Int
        if let open = self.openKeyedCount {
            index = open
        } else {
            index = self.reserveCount()
            self.openKeyedCount = index
        }
        return KeyedEncodingContainer(BinaryKeyedEncodingContainer<Key>(encoder: self, countIndex: index))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let index: Int
        if let open = self.openUnkeyedCount {
            index = open
        } else {
            index = self.reserveCount()
            self.openUnkeyedCount = index
        }
        return BinaryUnkeyedEncodingContainer(encoder: self, countIndex: index)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        BinarySingleValueEncodingContainer(encoder: self)
    }
}

struct BinaryKeyedEncodingContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: BinaryEncoderImpl
    let countIndex: Int
    var codingPath: [any CodingKey] { [] }

    private func entry(_ key: Key) {
        self.encoder.bumpCount(at: self.countIndex)
        self.encoder.writeKey(key)
    }

    private func primitive(_ value: some BinaryPrimitive, _ key: Key) {
        self.entry(key)
        value.write(to: &self.encoder.buffer)
    }

    // A nil field is an absent entry: the decoder's decodeNil/decodeIfPresent see the key missing.
    mutating func encodeNil(forKey key: Key) throws {}
    mutating func encode(_ value: Bool, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: String, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { self.primitive(value, key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { self.primitive(value, key) }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        if let optional = value as? any OptionalFieldEncodable {
            // Same form as encodeIfPresent: absent when nil, the plain value otherwise.
            guard let wrapped = optional.wrappedForField else { return }
            self.entry(key)
            try self.encoder.encodeValue(wrapped)
            return
        }
        self.entry(key)
        try self.encoder.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type,
        forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        self.entry(key)
        return KeyedEncodingContainer(
            BinaryKeyedEncodingContainer<NestedKey>(encoder: self.encoder, countIndex: self.encoder.reserveCount())
        )
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        self.entry(key)
        return BinaryUnkeyedEncodingContainer(encoder: self.encoder, countIndex: self.encoder.reserveCount())
    }

    mutating func superEncoder() -> any Encoder {
        self.superEncoder(forKey: Key(stringValue: "super")!)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        self.entry(key)
        self.encoder.openKeyedCount = nil
        self.encoder.openUnkeyedCount = nil
        return self.encoder
    }
}

struct BinaryUnkeyedEncodingContainer: UnkeyedEncodingContainer {
    let encoder: BinaryEncoderImpl
    let countIndex: Int
    var codingPath: [any CodingKey] { [] }
    var count: Int {
        Int(self.encoder.buffer.getInteger(at: self.countIndex, endianness: .little, as: UInt32.self)!)
    }

    private func primitive(_ value: some BinaryPrimitive) {
        self.encoder.bumpCount(at: self.countIndex)
        value.write(to: &self.encoder.buffer)
    }

    mutating func encodeNil() throws { self.primitive(UInt8(0)) }
    mutating func encode(_ value: Bool) throws { self.primitive(value) }
    mutating func encode(_ value: String) throws { self.primitive(value) }
    mutating func encode(_ value: Double) throws { self.primitive(value) }
    mutating func encode(_ value: Float) throws { self.primitive(value) }
    mutating func encode(_ value: Int) throws { self.primitive(value) }
    mutating func encode(_ value: Int8) throws { self.primitive(value) }
    mutating func encode(_ value: Int16) throws { self.primitive(value) }
    mutating func encode(_ value: Int32) throws { self.primitive(value) }
    mutating func encode(_ value: Int64) throws { self.primitive(value) }
    mutating func encode(_ value: UInt) throws { self.primitive(value) }
    mutating func encode(_ value: UInt8) throws { self.primitive(value) }
    mutating func encode(_ value: UInt16) throws { self.primitive(value) }
    mutating func encode(_ value: UInt32) throws { self.primitive(value) }
    mutating func encode(_ value: UInt64) throws { self.primitive(value) }

    mutating func encode<T: Encodable>(_ value: T) throws {
        self.encoder.bumpCount(at: self.countIndex)
        try self.encoder.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        self.encoder.bumpCount(at: self.countIndex)
        return KeyedEncodingContainer(
            BinaryKeyedEncodingContainer<NestedKey>(encoder: self.encoder, countIndex: self.encoder.reserveCount())
        )
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        self.encoder.bumpCount(at: self.countIndex)
        return BinaryUnkeyedEncodingContainer(encoder: self.encoder, countIndex: self.encoder.reserveCount())
    }

    mutating func superEncoder() -> any Encoder {
        self.encoder.bumpCount(at: self.countIndex)
        self.encoder.openKeyedCount = nil
        self.encoder.openUnkeyedCount = nil
        return self.encoder
    }
}

struct BinarySingleValueEncodingContainer: SingleValueEncodingContainer {
    let encoder: BinaryEncoderImpl
    var codingPath: [any CodingKey] { [] }

    private func primitive(_ value: some BinaryPrimitive) { value.write(to: &self.encoder.buffer) }

    mutating func encodeNil() throws { self.primitive(UInt8(0)) }
    mutating func encode(_ value: Bool) throws { self.primitive(value) }
    mutating func encode(_ value: String) throws { self.primitive(value) }
    mutating func encode(_ value: Double) throws { self.primitive(value) }
    mutating func encode(_ value: Float) throws { self.primitive(value) }
    mutating func encode(_ value: Int) throws { self.primitive(value) }
    mutating func encode(_ value: Int8) throws { self.primitive(value) }
    mutating func encode(_ value: Int16) throws { self.primitive(value) }
    mutating func encode(_ value: Int32) throws { self.primitive(value) }
    mutating func encode(_ value: Int64) throws { self.primitive(value) }
    mutating func encode(_ value: UInt) throws { self.primitive(value) }
    mutating func encode(_ value: UInt8) throws { self.primitive(value) }
    mutating func encode(_ value: UInt16) throws { self.primitive(value) }
    mutating func encode(_ value: UInt32) throws { self.primitive(value) }
    mutating func encode(_ value: UInt64) throws { self.primitive(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { try self.encoder.encodeValue(value) }
}
