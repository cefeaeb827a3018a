/// What a probed `init(from:)` asked for (SchemaProbe.swift).
class ProbeRecording {
    var fields: [WireField] = []
    var sequence: [WireShape] = []
    var single: WireShape?
    var keyed = false
    var unkeyed = false

    var layout: TypeSchema.Layout {
        if let single { return .value(single) }
        if self.unkeyed && !self.keyed { return .sequence(self.sequence) }
        return .record(self.fields)
    }
}

/// A decoder that hands out samples and records the requests (SchemaProbe.swift).
final class ProbeDecoder: Decoder {
    let probe: SchemaProbe
    /// For an enum probed case by case: the key the keyed container reports as its only one.
    let chosenCase: String?
    let recording = ProbeRecording()
    /// The fields of the chosen case (its nested container).
    var caseFields: [WireField] = []
    /// Whether `allKeys` was asked (enums ask; structs do not), and the keys the key type has.
    var askedForKeys = false
    var keyNames: [String]?

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(probe: SchemaProbe, chosenCase: String?) {
        self.probe = probe
        self.chosenCase = chosenCase
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        self.recording.keyed = true
        return KeyedDecodingContainer(ProbeKeyedContainer<Key>(decoder: self, sink: self.recording, topLevel: true))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        self.recording.unkeyed = true
        return ProbeUnkeyedContainer(decoder: self)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        ProbeSingleValueContainer(decoder: self)
    }

    /// A sample of `type` with its shape, or a stop naming the type.
    func sample<T: Decodable>(_ type: T.Type) throws -> (WireShape, T) {
        let (shape, sample) = self.probe.probe(type)
        guard let sample else { throw ProbeStop(reason: "no sample of \(_typeName(type, qualified: false))") }
        return (shape, sample)
    }
}

struct ProbeKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: ProbeDecoder
    let sink: ProbeRecording
    let topLevel: Bool
    var codingPath: [any CodingKey] { [] }

    var allKeys: [Key] {
        guard self.topLevel else { return [] }
        self.decoder.askedForKeys = true
        self.decoder.keyNames = codingKeyNames(Key.self)
        return self.decoder.chosenCase.flatMap { Key(stringValue: $0) }.map { [$0] } ?? []
    }

    func contains(_ key: Key) -> Bool { true }
    func decodeNil(forKey key: Key) throws -> Bool { false }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        let (shape, sample) = self.decoder.probe.probe(type)
        self.sink.fields.append(WireField(name: key.stringValue, shape: shape, required: true))
        guard let sample else { throw ProbeStop(reason: "no sample of \(_typeName(type, qualified: false)) for '\(key.stringValue)'") }
        return sample
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        let (shape, _) = self.decoder.probe.probe(type)
        self.sink.fields.append(WireField(name: key.stringValue, shape: shape, required: false))
        return nil
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try self.decode(type, key) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try self.decode(type, key) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try self.decode(type, key) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try self.decode(type, key) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try self.decode(type, key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try self.decode(type, key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try self.decode(type, key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try self.decode(type, key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try self.decode(type, key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try self.decode(type, key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try self.decode(type, key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try self.decode(type, key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try self.decode(type, key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try self.decode(type, key) }

    /// The scalar overloads funnel here (the generic one is a different requirement).
    private func decode<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T {
        try self.decode(type, forKey: key)
    }

    // Without these the standard library's defaults answer through `decode`, as if required.
    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try self.decodeIfPresent(type, key) }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try self.decodeIfPresent(type, key) }

    private func decodeIfPresent<T: Decodable>(_ type: T.Type, _ key: Key) throws -> T? {
        try self.decodeIfPresent(type, forKey: key)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        // An enum case's associated values; elsewhere a custom nesting, recorded as a field of its own.
        let nested = ProbeRecording()
        if self.topLevel, key.stringValue == self.decoder.chosenCase {
            return KeyedDecodingContainer(ProbeKeyedContainer<NestedKey>(decoder: self.decoder, sink: CaseSink(self.decoder), topLevel: false))
        }
        self.sink.fields.append(WireField(name: key.stringValue, shape: .named("(nested)"), required: true))
        return KeyedDecodingContainer(ProbeKeyedContainer<NestedKey>(decoder: self.decoder, sink: nested, topLevel: false))
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        self.sink.fields.append(WireField(name: key.stringValue, shape: .named("(nested)"), required: true))
        return ProbeUnkeyedContainer(decoder: self.decoder)
    }

    func superDecoder() throws -> any Decoder { ProbeDecoder(probe: self.decoder.probe, chosenCase: nil) }
    func superDecoder(forKey key: Key) throws -> any Decoder { ProbeDecoder(probe: self.decoder.probe, chosenCase: nil) }
}

/// Routes the fields of the chosen case's nested container to ``ProbeDecoder/caseFields``.
final class CaseSink: ProbeRecording {
    private let decoder: ProbeDecoder
    init(_ decoder: ProbeDecoder) { self.decoder = decoder }
    override var fields: [WireField] {
        get { self.decoder.caseFields }
        set { self.decoder.caseFields = newValue }
    }
}

struct ProbeUnkeyedContainer: UnkeyedDecodingContainer {
    let decoder: ProbeDecoder
    var codingPath: [any CodingKey] { [] }
    var count: Int? { nil }
    // Types that loop until the end read nothing; types with a fixed layout never ask.
    var isAtEnd: Bool { true }
    var currentIndex = 0

    mutating func decodeNil() throws -> Bool { false }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (shape, sample) = self.decoder.probe.probe(type)
        self.decoder.recording.sequence.append(shape)
        self.currentIndex += 1
        guard let sample else { throw ProbeStop(reason: "no sample of \(_typeName(type, qualified: false))") }
        return sample
    }

    mutating func decodeIfPresent<T: Decodable>(_ type: T.Type) throws -> T? {
        let (shape, _) = self.decoder.probe.probe(type)
        self.decoder.recording.sequence.append(.optional(shape))
        self.currentIndex += 1
        return nil
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        KeyedDecodingContainer(ProbeKeyedContainer<NestedKey>(decoder: self.decoder, sink: ProbeRecording(), topLevel: false))
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { ProbeUnkeyedContainer(decoder: self.decoder) }
    mutating func superDecoder() throws -> any Decoder { ProbeDecoder(probe: self.decoder.probe, chosenCase: nil) }
}

struct ProbeSingleValueContainer: SingleValueDecodingContainer {
    let decoder: ProbeDecoder
    var codingPath: [any CodingKey] { [] }

    func decodeNil() -> Bool { false }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (shape, sample) = try self.decoder.sample(type)
        self.decoder.recording.single = shape
        return sample
    }

    func decode(_ type: Bool.Type) throws -> Bool { try self.decode(type, ()) }
    func decode(_ type: String.Type) throws -> String { try self.decode(type, ()) }
    func decode(_ type: Double.Type) throws -> Double { try self.decode(type, ()) }
    func decode(_ type: Float.Type) throws -> Float { try self.decode(type, ()) }
    func decode(_ type: Int.Type) throws -> Int { try self.decode(type, ()) }
    func decode(_ type: Int8.Type) throws -> Int8 { try self.decode(type, ()) }
    func decode(_ type: Int16.Type) throws -> Int16 { try self.decode(type, ()) }
    func decode(_ type: Int32.Type) throws -> Int32 { try self.decode(type, ()) }
    func decode(_ type: Int64.Type) throws -> Int64 { try self.decode(type, ()) }
    func decode(_ type: UInt.Type) throws -> UInt { try self.decode(type, ()) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try self.decode(type, ()) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try self.decode(type, ()) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try self.decode(type, ()) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try self.decode(type, ()) }

    /// The scalar overloads funnel here (the generic one is a different requirement).
    private func decode<T: Decodable>(_ type: T.Type, _: Void) throws -> T {
        try self.decode(type)
    }
}
