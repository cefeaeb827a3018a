#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import NIOCore

/// Derives wire shapes from `Decodable` types, without an IDL.
///
/// A type's `init(from:)` is run against a decoder that hands out sample values
/// and writes down what was asked for: which keys in what order, of what type,
/// which ones only "if present" (optional). Enums with associated values are
/// run once per case (their `CodingKeys` are listed from the type, see
/// EnumValues.swift); raw-value enums list their values. A type whose
/// `init(from:)` refuses the samples is described up to that point, with a note
/// — conform it to ``WireSchemaDescribable`` to describe it exactly.
public struct WireSchemas: Sendable {
    /// The named types described so far.
    public private(set) var types: [String: TypeSchema] = [:]
    /// Which type each name stands for (TypeNames.swift).
    private var names = TypeNames()

    /// Creates an empty collection.
    public init() {}

    /// The shape of `type`, adding the named types it uses to ``types``.
    public mutating func shape<T: Decodable>(of type: T.Type) -> WireShape {
        let probe = SchemaProbe(types: self.types, names: self.names)
        let (shape, _) = probe.probe(type)
        self.types = probe.types
        self.names = probe.names
        return shape
    }

    /// The shape of a type known only to be `Encodable` (a handler's result):
    /// derived when it is also `Decodable`, else named with a note saying why it is not described.
    public mutating func shape(ofEncodable type: any Encodable.Type) -> WireShape {
        if let decodable = type as? any Decodable.Type { return self.shape(of: decodable) }
        let name = self.names.name(for: type)
        if self.types[name] == nil {
            self.types[name] = TypeSchema(.record([]), note: "only Encodable: make it Codable (or WireSchemaDescribable) to describe it")
        }
        return .named(name)
    }
}

/// A type that states its own wire shape, for types whose `init(from:)`
/// cannot be probed (it validates, or reads a format of its own).
public protocol WireSchemaDescribable: Decodable {
    /// The type's description.
    static var wireSchema: TypeSchema { get }
    /// A value of the type, returned to the `init(from:)` of types that contain one.
    static var wireSchemaSample: Self { get }
}

/// The values the probe hands out for scalars, and their shapes.
private protocol ProbeLeaf: Decodable {
    static var probeShape: WireShape { get }
    static var probeSample: Self { get }
}

extension Bool: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.bool) }
    static var probeSample: Bool { false }
}
extension String: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.string) }
    static var probeSample: String { "" }
}
extension Int: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.int64) }
    static var probeSample: Int { 0 }
}
extension Int8: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.int8) }
    static var probeSample: Int8 { 0 }
}
extension Int16: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.int16) }
    static var probeSample: Int16 { 0 }
}
extension Int32: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.int32) }
    static var probeSample: Int32 { 0 }
}
extension Int64: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.int64) }
    static var probeSample: Int64 { 0 }
}
extension UInt: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uint64) }
    static var probeSample: UInt { 0 }
}
extension UInt8: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uint8) }
    static var probeSample: UInt8 { 0 }
}
extension UInt16: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uint16) }
    static var probeSample: UInt16 { 0 }
}
extension UInt32: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uint32) }
    static var probeSample: UInt32 { 0 }
}
extension UInt64: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uint64) }
    static var probeSample: UInt64 { 0 }
}
extension Float: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.float) }
    static var probeSample: Float { 0 }
}
extension Double: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.double) }
    static var probeSample: Double { 0 }
}
extension Data: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.bytes) }
    static var probeSample: Data { Data() }
}
extension ByteBuffer: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.bytes) }
    static var probeSample: ByteBuffer { ByteBuffer() }
}
extension Date: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.date) }
    static var probeSample: Date { Date(timeIntervalSince1970: 0) }
}
extension UUID: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.uuid) }
    static var probeSample: UUID { UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)) }
}
extension URL: ProbeLeaf {
    static var probeShape: WireShape { .primitive(.url) }
    static var probeSample: URL { URL(string: "intercom:sample")! }
}

/// Collections and optionals: shaped by their element, sampled empty.
private protocol ProbeCollection {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any)
}

extension Optional: ProbeCollection where Wrapped: Decodable {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any) {
        (.optional(probe.probe(Wrapped.self).shape), Wrapped?.none as Any)
    }
}
extension Array: ProbeCollection where Element: Decodable {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any) {
        if Element.self == UInt8.self { return (.primitive(.bytes), [Element]()) }
        return (.array(probe.probe(Element.self).shape), [Element]())
    }
}
extension ContiguousArray: ProbeCollection where Element: Decodable {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any) {
        (.array(probe.probe(Element.self).shape), ContiguousArray<Element>())
    }
}
extension Set: ProbeCollection where Element: Decodable {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any) {
        (.array(probe.probe(Element.self).shape), Set<Element>())
    }
}
extension Dictionary: ProbeCollection where Key: Decodable, Value: Decodable {
    static func probeCollection(_ probe: SchemaProbe) -> (WireShape, Any) {
        (.dictionary(key: probe.probe(Key.self).shape, value: probe.probe(Value.self).shape), [Key: Value]())
    }
}

/// Stops a probed `init(from:)` at a value the probe could not sample.
struct ProbeStop: Error {
    let reason: String
}

/// One derivation: the named types found and a sample of each, to hand to the types that contain them.
final class SchemaProbe {
    var types: [String: TypeSchema]
    private var samples: [String: Any] = [:]
    private var inProgress: Set<String> = []

    var names: TypeNames

    init(types: [String: TypeSchema], names: TypeNames) {
        self.types = types
        self.names = names
    }

    /// The shape of `type` and a value of it, if one could be made.
    func probe<T: Decodable>(_ type: T.Type) -> (shape: WireShape, sample: T?) {
        if let leaf = type as? any ProbeLeaf.Type {
            return (leaf.probeShape, leaf.probeSample as? T)
        }
        if let collection = type as? any ProbeCollection.Type {
            let (shape, sample) = collection.probeCollection(self)
            return (shape, sample as? T)
        }
        let name = self.names.name(for: type)
        if self.inProgress.contains(name) || self.types[name] != nil {
            return (.named(name), self.samples[name] as? T ?? self.describedSample(type))
        }
        if let described = type as? any WireSchemaDescribable.Type {
            self.types[name] = described.wireSchema
            self.samples[name] = described.wireSchemaSample
            return (.named(name), described.wireSchemaSample as? T)
        }
        self.inProgress.insert(name)
        defer { self.inProgress.remove(name) }
        let (schema, sample) = self.derive(type)
        self.types[name] = schema
        if let sample { self.samples[name] = sample }
        return (.named(name), sample)
    }

    private func describedSample<T>(_ type: T.Type) -> T? {
        (type as? any WireSchemaDescribable.Type)?.wireSchemaSample as? T
    }

    /// Runs `init(from:)` of a named type against the probe decoder.
    private func derive<T: Decodable>(_ type: T.Type) -> (TypeSchema, T?) {
        if let enumeration = self.rawValueEnumeration(type) { return enumeration }
        let decoder = ProbeDecoder(probe: self, chosenCase: nil)
        var sample: T?
        var stop: String?
        do { sample = try T(from: decoder) } catch { stop = Self.reason(error) }
        if decoder.askedForKeys, let keys = decoder.keyNames, !keys.isEmpty {
            return self.deriveCases(type, keys: keys)
        }
        let note = stop.map { "described up to the value the probe could not sample: \($0)" }
        return (TypeSchema(decoder.recording.layout, note: note), sample)
    }

    /// An enum with associated values (or synthesised `Codable` without raw
    /// values): one `init(from:)` per case, each told that its key is the only one.
    private func deriveCases<T: Decodable>(_ type: T.Type, keys: [String]) -> (TypeSchema, T?) {
        var cases: [String: [WireField]] = [:]
        var sample: T?
        var stops: [String] = []
        var pending = keys
        // A recursive case needs a sample of the enum itself: retry it once another case gave one.
        for _ in 0..<2 where !pending.isEmpty {
            var failed: [String] = []
            for key in pending {
                let decoder = ProbeDecoder(probe: self, chosenCase: key)
                do {
                    let value = try T(from: decoder)
                    if sample == nil {
                        sample = value
                        self.samples[self.names.name(for: type)] = value
                    }
                    cases[key] = decoder.caseFields
                } catch {
                    cases[key] = decoder.caseFields
                    failed.append(key)
                    stops.append("\(key): \(Self.reason(error))")
                }
            }
            pending = sample == nil ? [] : failed
            if pending.isEmpty { stops = [] }
        }
        let note = stops.isEmpty ? nil : "cases described up to the value the probe could not sample (\(stops.joined(separator: "; ")))"
        return (TypeSchema(.cases(cases), note: note), sample)
    }

    /// A payload-free enum with raw values: its values, written as the raw type.
    private func rawValueEnumeration<T: Decodable>(_ type: T.Type) -> (TypeSchema, T?)? {
        guard let raw = type as? any RawRepresentable.Type, let values = payloadFreeEnumValues(type), !values.isEmpty else {
            return nil
        }
        func rawShape<R: RawRepresentable>(_: R.Type) -> WireShape? {
            (R.RawValue.self as? any Decodable.Type).map { self.probe($0).shape }
        }
        guard let shape = rawShape(raw) else { return nil }
        let names = values.map { value in
            (value as? any RawRepresentable).map { String(describing: $0.rawValue) } ?? String(describing: value)
        }
        return (TypeSchema(.enumeration(raw: shape, values: names)), values[0])
    }

    static func reason(_ error: any Error) -> String {
        if let stop = error as? ProbeStop { return stop.reason }
        if case DecodingError.dataCorrupted(let context) = error { return context.debugDescription }
        return String(describing: error)
    }
}
