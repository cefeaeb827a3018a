/// The wire shape of a value, derived from its Swift type (``WireSchemas``):
/// what a payload of that type holds, independent of the codec that writes it.
///
/// Written as a type expression — `Int64`, `String?`, `[Reading]`,
/// `[String: Double]` — both in `intercom describe` and in a saved snapshot, so a
/// snapshot reads like Swift. Integers are named by their wire width: `Int` and
/// `Int64` are one shape (`Int64`), as are `UInt` and `UInt64`.
public indirect enum WireShape: Sendable, Hashable, CustomStringConvertible {
    /// A scalar the codecs write directly.
    case primitive(Primitive)
    /// A value that may be absent.
    case optional(WireShape)
    /// An array or set of elements.
    case array(WireShape)
    /// A dictionary.
    case dictionary(key: WireShape, value: WireShape)
    /// A named type, described in ``ServiceSchema/types``.
    case named(String)

    /// The scalars.
    public enum Primitive: String, Sendable, Hashable, CaseIterable {
        case bool = "Bool", string = "String", bytes = "Bytes"
        case int8 = "Int8", int16 = "Int16", int32 = "Int32", int64 = "Int64"
        case uint8 = "UInt8", uint16 = "UInt16", uint32 = "UInt32", uint64 = "UInt64"
        case float = "Float", double = "Double"
        case date = "Date", uuid = "UUID", url = "URL"
        /// A file descriptor (`UnixDescriptor`): its index among the frame's attached descriptors.
        case descriptor = "Descriptor"
        /// Any JSON value (`JSONValue`): a handler that takes whatever it is sent.
        case json = "JSON"
        /// No value at all: the result of a handler that returns nothing.
        case none = "None"

        /// For integers: whether signed and how many bits; nil for the rest.
        var integer: (signed: Bool, bits: Int)? {
            switch self {
            case .int8: (true, 8)
            case .int16: (true, 16)
            case .int32: (true, 32)
            case .int64: (true, 64)
            case .uint8: (false, 8)
            case .uint16: (false, 16)
            case .uint32: (false, 32)
            case .uint64: (false, 64)
            default: nil
            }
        }
    }

    /// The type expression (`[String: Reading]?`).
    public var description: String {
        switch self {
        case .primitive(let primitive): primitive.rawValue
        case .optional(let wrapped): "\(wrapped)?"
        case .array(let element): "[\(element)]"
        case .dictionary(let key, let value): "[\(key): \(value)]"
        case .named(let name): name
        }
    }

    /// Parses a type expression written by ``description``.
    public init(parsing text: some StringProtocol) {
        let text = Substring(text).trimmingSpaces
        if text.hasSuffix("?") {
            self = .optional(WireShape(parsing: text.dropLast()))
        } else if text.hasPrefix("["), text.hasSuffix("]") {
            let inner = text.dropFirst().dropLast()
            if let colon = Self.topLevelColon(in: inner) {
                self = .dictionary(
                    key: WireShape(parsing: inner[..<colon]), value: WireShape(parsing: inner[inner.index(after: colon)...]))
            } else {
                self = .array(WireShape(parsing: inner))
            }
        } else if let primitive = Primitive(rawValue: String(text)) {
            self = .primitive(primitive)
        } else {
            self = .named(String(text))
        }
    }

    /// The `:` of `[Key: Value]` outside any nested brackets or generic arguments.
    private static func topLevelColon(in text: Substring) -> Substring.Index? {
        var depth = 0
        for index in text.indices {
            switch text[index] {
            case "[", "<", "(": depth += 1
            case "]", ">", ")": depth -= 1
            case ":" where depth == 0: return index
            default: break
            }
        }
        return nil
    }
}

extension WireShape: Codable {
    /// Decodes a type expression.
    public init(from decoder: any Decoder) throws {
        self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    /// Encodes the type expression.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.description)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var text = self
        while text.first == " " { text = text.dropFirst() }
        while text.last == " " { text = text.dropLast() }
        return text
    }
}

/// One field of a keyed type: its key, its shape, and whether a writer may leave it out.
public struct WireField: Codable, Sendable, Hashable {
    /// The coding key (the property's name, or its custom `CodingKeys` name).
    public var name: String
    /// What the field holds (without the optional: see ``required``).
    public var shape: WireShape
    /// Whether the field is always written (false for optionals: a `nil` is left out).
    public var required: Bool

    /// Creates a field.
    public init(name: String, shape: WireShape, required: Bool) {
        self.name = name
        self.shape = shape
        self.required = required
    }
}

/// What a named type looks like on the wire.
public struct TypeSchema: Codable, Sendable, Hashable {
    /// The layouts a type's `Codable` conformance can have.
    public enum Layout: Sendable, Hashable {
        /// Keyed fields, in the order the type reads them (a struct, a class).
        case record([WireField])
        /// One of several cases, each a keyed set of associated values
        /// (an enum with synthesised `Codable`).
        case cases([String: [WireField]])
        /// A raw-value enum: written as its raw value, one of `values`.
        case enumeration(raw: WireShape, values: [String])
        /// A type written as one value of another shape (its own single-value container).
        case value(WireShape)
        /// A type written as a fixed sequence of values (its own unkeyed container).
        case sequence([WireShape])
    }

    /// The layout.
    public var layout: Layout
    /// Why the description may be incomplete, when it may be.
    public var note: String?

    /// Creates a description.
    public init(_ layout: Layout, note: String? = nil) {
        self.layout = layout
        self.note = note
    }

    private enum CodingKeys: String, CodingKey { case kind, fields, cases, raw, values, shape, shapes, note }

    /// Decodes the form ``encode(to:)`` writes.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.note = try container.decodeIfPresent(String.self, forKey: .note)
        switch try container.decode(String.self, forKey: .kind) {
        case "record": self.layout = .record(try container.decode([WireField].self, forKey: .fields))
        case "cases": self.layout = .cases(try container.decode([String: [WireField]].self, forKey: .cases))
        case "enumeration":
            self.layout = .enumeration(
                raw: try container.decode(WireShape.self, forKey: .raw), values: try container.decode([String].self, forKey: .values))
        case "value": self.layout = .value(try container.decode(WireShape.self, forKey: .shape))
        case "sequence": self.layout = .sequence(try container.decode([WireShape].self, forKey: .shapes))
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .kind, in: container, debugDescription: "unknown type layout '\(other)'")
        }
    }

    /// Encodes as `{"kind": "record", "fields": [...]}` and the like.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(self.note, forKey: .note)
        switch self.layout {
        case .record(let fields):
            try container.encode("record", forKey: .kind)
            try container.encode(fields, forKey: .fields)
        case .cases(let cases):
            try container.encode("cases", forKey: .kind)
            try container.encode(cases, forKey: .cases)
        case .enumeration(let raw, let values):
            try container.encode("enumeration", forKey: .kind)
            try container.encode(raw, forKey: .raw)
            try container.encode(values, forKey: .values)
        case .value(let shape):
            try container.encode("value", forKey: .kind)
            try container.encode(shape, forKey: .shape)
        case .sequence(let shapes):
            try container.encode("sequence", forKey: .kind)
            try container.encode(shapes, forKey: .shapes)
        }
    }
}

/// One method of a service with the shapes of what crosses the wire.
public struct MethodSchema: Codable, Sendable, Hashable {
    /// How the method answers.
    public enum Kind: String, Codable, Sendable, Hashable {
        /// One argument, one result (or none).
        case call
        /// One argument, a stream of results (``item``).
        case serverStream
        /// One argument and a stream of inputs (``input``), one result.
        case clientStream
        /// One argument, streams both ways.
        case bidirectionalStream
    }

    /// The method's name.
    public var name: String
    /// How it answers.
    public var kind: Kind
    /// The argument's shape.
    public var argument: WireShape
    /// The result's shape (`None` for handlers that return nothing and for output streams).
    public var result: WireShape
    /// The shape of each streamed result, for server and bidirectional streams.
    public var item: WireShape?
    /// The shape of each streamed input, for client and bidirectional streams.
    public var input: WireShape?

    /// Creates a method description.
    public init(
        name: String, kind: Kind = .call, argument: WireShape, result: WireShape, item: WireShape? = nil, input: WireShape? = nil
    ) {
        self.name = name
        self.kind = kind
        self.argument = argument
        self.result = result
        self.item = item
        self.input = input
    }
}

/// A service's methods with the types they use: what `intercom describe` prints,
/// what a snapshot file holds and what ``SchemaCompatibility`` compares.
public struct ServiceSchema: Codable, Sendable, Hashable {
    /// The methods, sorted by name.
    public var methods: [MethodSchema]
    /// The named types the methods use, by name.
    public var types: [String: TypeSchema]

    /// Creates a schema.
    public init(methods: [MethodSchema], types: [String: TypeSchema]) {
        self.methods = methods.sorted { $0.name < $1.name }
        self.types = types
    }

    /// The method called `name`.
    public func method(_ name: String) -> MethodSchema? {
        self.methods.first { $0.name == name }
    }

    /// The methods `isIncluded` keeps, with only the types they use.
    public func filter(_ isIncluded: (MethodSchema) -> Bool) -> ServiceSchema {
        let methods = self.methods.filter(isIncluded)
        var used: Set<String> = []
        var pending = methods.flatMap { [$0.argument, $0.result, $0.item, $0.input].compactMap { $0 } }
        while let shape = pending.popLast() {
            switch shape {
            case .primitive: break
            case .optional(let inner), .array(let inner): pending.append(inner)
            case .dictionary(let key, let value): pending += [key, value]
            case .named(let name):
                guard used.insert(name).inserted, let type = self.types[name] else { continue }
                switch type.layout {
                case .record(let fields): pending += fields.map(\.shape)
                case .cases(let cases): pending += cases.values.flatMap { $0.map(\.shape) }
                case .enumeration(let raw, _): pending.append(raw)
                case .value(let inner): pending.append(inner)
                case .sequence(let shapes): pending += shapes
                }
            }
        }
        return ServiceSchema(methods: methods, types: self.types.filter { used.contains($0.key) })
    }
}
