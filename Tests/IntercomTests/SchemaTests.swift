import Foundation
import Intercom
import Testing

// Types as users write them, with synthesised Codable unless a test says otherwise.
private struct Reading: Codable, Sendable {
    var sensor: String
    var value: Double
    var unit: Unit
    var taken: Date
    var tags: [String]
    var calibration: Calibration?
    var extra: [String: Int]
}

private enum Unit: String, Codable, Sendable { case celsius, kelvin }
private enum Level: Int, Codable, Sendable, CaseIterable { case low = 1, high = 9 }
private enum Mode: Codable, Sendable { case fast, careful }

private struct Calibration: Codable, Sendable {
    var offset: Int32
    var by: String?
}

private enum Command: Codable, Sendable {
    case move(x: Int, y: Int)
    case say(String)
    case stop
    case nested(Calibration, level: Level)
}

private indirect enum Tree: Codable, Sendable {
    case leaf(Int)
    case node(Tree, Tree)
}

private struct Node: Codable, Sendable {
    var name: String
    var children: [Node]
    var parent: Box?
}

private final class Box: Codable, Sendable {
    let node: Node
}

/// A single-value wrapper with a validating init (refuses the empty sample).
private struct UserID: Codable, Sendable, Hashable {
    let raw: String
    init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard !raw.isEmpty else { throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "empty user id")) }
        self.raw = raw
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.raw)
    }
}

private struct Account: Codable, Sendable {
    var id: UserID
    var email: String
}

private struct Described: WireSchemaDescribable, Codable, Sendable {
    var id: UserID
    static var wireSchema: TypeSchema { TypeSchema(.record([WireField(name: "id", shape: .primitive(.string), required: true)])) }
    static var wireSchemaSample: Described { Described(id: try! JSONDecoder().decode(UserID.self, from: Data("\"x\"".utf8))) }
}

private struct Holder: Codable, Sendable {
    var described: Described
    var after: Bool
}

private struct OnlyEncodable: Encodable, Sendable { var a: Int }

private enum Camera { struct Settings: Codable, Sendable { var exposure: Int } }
private enum Microphone { struct Settings: Codable, Sendable { var gain: Double } }
private struct Both: Codable, Sendable {
    var camera: Camera.Settings
    var microphone: Microphone.Settings
}

/// Schemas derived from Swift types alone (no IDL): structs, classes, enums of
/// every kind, optionals, arrays, dictionaries, nesting and recursion.
struct SchemaTests {
    private func describe<T: Decodable>(_ type: T.Type) -> (WireShape, [String: TypeSchema]) {
        var schemas = WireSchemas()
        let shape = schemas.shape(of: type)
        return (shape, schemas.types)
    }

    @Test func scalarsAndCollectionsAreShapesNotTypes() {
        #expect(self.describe(Int.self).0 == .primitive(.int64))
        #expect(self.describe(UInt32.self).0 == .primitive(.uint32))
        #expect(self.describe([UInt8].self).0 == .primitive(.bytes))
        #expect(self.describe(Data.self).0 == .primitive(.bytes))
        #expect(self.describe([String?].self).0 == .array(.optional(.primitive(.string))))
        #expect(self.describe([String: [Double]].self).0 == .dictionary(key: .primitive(.string), value: .array(.primitive(.double))))
        #expect(self.describe(Set<UUID>.self).0 == .array(.primitive(.uuid)))
        #expect(self.describe(Int.self).1.isEmpty)
    }

    @Test func aStructListsItsFieldsInOrderWithOptionalsMarked() throws {
        let (shape, types) = self.describe(Reading.self)
        #expect(shape == .named("Reading"))
        guard case .record(let fields) = types["Reading"]?.layout else {
            Issue.record("Reading is \(String(describing: types["Reading"]))")
            return
        }
        #expect(fields.map(\.name) == ["sensor", "value", "unit", "taken", "tags", "calibration", "extra"])
        #expect(fields.map(\.shape.description) == ["String", "Double", "Unit", "Date", "[String]", "Calibration", "[String: Int64]"])
        #expect(fields.map(\.required) == [true, true, true, true, true, false, true])
        #expect(types["Calibration"]?.layout == .record([
            WireField(name: "offset", shape: .primitive(.int32), required: true),
            WireField(name: "by", shape: .primitive(.string), required: false),
        ]))
        // A raw-value enum without CaseIterable still lists its values.
        #expect(types["Unit"]?.layout == .enumeration(raw: .primitive(.string), values: ["celsius", "kelvin"]))
        #expect(types.values.allSatisfy { $0.note == nil })
    }

    @Test func enumsOfEveryKind() {
        #expect(self.describe(Level.self).1["Level"]?.layout == .enumeration(raw: .primitive(.int64), values: ["1", "9"]))
        #expect(self.describe(Mode.self).1["Mode"]?.layout == .cases(["fast": [], "careful": []]))
        let (_, types) = self.describe(Command.self)
        #expect(
            types["Command"]?.layout
                == .cases([
                    "move": [WireField(name: "x", shape: .primitive(.int64), required: true), WireField(name: "y", shape: .primitive(.int64), required: true)],
                    "say": [WireField(name: "_0", shape: .primitive(.string), required: true)],
                    "stop": [],
                    "nested": [WireField(name: "_0", shape: .named("Calibration"), required: true), WireField(name: "level", shape: .named("Level"), required: true)],
                ]))
        #expect(types["Command"]?.note == nil)
    }

    @Test func recursiveTypesEndInAReference() {
        let (_, tree) = self.describe(Tree.self)
        #expect(
            tree["Tree"]?.layout
                == .cases([
                    "leaf": [WireField(name: "_0", shape: .primitive(.int64), required: true)],
                    "node": [WireField(name: "_0", shape: .named("Tree"), required: true), WireField(name: "_1", shape: .named("Tree"), required: true)],
                ]))
        #expect(tree["Tree"]?.note == nil)
        let (_, nodes) = self.describe(Node.self)
        #expect(nodes["Node"]?.layout == .record([
            WireField(name: "name", shape: .primitive(.string), required: true),
            WireField(name: "children", shape: .array(.named("Node")), required: true),
            WireField(name: "parent", shape: .named("Box"), required: false),
        ]))
        #expect(nodes["Box"]?.layout == .record([WireField(name: "node", shape: .named("Node"), required: true)]))
    }

    @Test func aValidatingInitIsDescribedAsFarAsItGoesAndSaysSo() {
        let (_, types) = self.describe(Account.self)
        #expect(types["UserID"]?.layout == .value(.primitive(.string)))
        #expect(types["UserID"]?.note?.contains("empty user id") == true)
        // The parent gets the field whose sample failed, and a note; the rest is unknown.
        #expect(types["Account"]?.layout == .record([WireField(name: "id", shape: .named("UserID"), required: true)]))
        #expect(types["Account"]?.note != nil)
        // WireSchemaDescribable fixes it.
        let (_, holder) = self.describe(Holder.self)
        #expect(holder["Holder"]?.layout == .record([
            WireField(name: "described", shape: .named("Described"), required: true),
            WireField(name: "after", shape: .primitive(.bool), required: true),
        ]))
        #expect(holder["Holder"]?.note == nil)
    }

    @Test func twoTypesWithOneNameAreDescribedApart() throws {
        let (_, types) = self.describe(Both.self)
        guard case .record(let fields) = types["Both"]?.layout, fields.count == 2 else {
            Issue.record("Both is \(String(describing: types["Both"]))")
            return
        }
        #expect(fields[0].shape == .named("Settings"), "the first keeps the short name")
        guard case .named(let second) = fields[1].shape else { return }
        #expect(second != "Settings" && second.hasSuffix("Microphone.Settings"), "\(second)")
        #expect(types["Settings"]?.layout == .record([WireField(name: "exposure", shape: .primitive(.int64), required: true)]))
        #expect(types[second]?.layout == .record([WireField(name: "gain", shape: .primitive(.double), required: true)]))
    }

    @Test func typeExpressionsRoundTrip() throws {
        for text in ["Int64", "String?", "[Reading]", "[String: [Double?]]", "[[UUID]: Node]?", "PropertyState<Int>", "None"] {
            #expect(WireShape(parsing: text).description == text)
        }
        var schemas = WireSchemas()
        let schema = ServiceSchema(
            methods: [MethodSchema(name: "a", argument: schemas.shape(of: Command.self), result: schemas.shape(of: Reading.self))],
            types: schemas.types)
        let data = try JSONEncoder().encode(schema)
        #expect(try JSONDecoder().decode(ServiceSchema.self, from: data) == schema)
    }

    @Test func theRouterDescribesEveryKindOfMethod() throws {
        let router = Router()
        try router.register("sensors.read") { (name: String, _: CallContext) -> Reading in
            Reading(sensor: name, value: 1, unit: .celsius, taken: Date(), tags: [], extra: [:])
        }
        try router.register("sensors.reset") { (_: Int, _: CallContext) in }
        try router.register("sensors.encodable") { (_: Int, _: CallContext) in OnlyEncodable(a: 1) }
        try router.registerStream("sensors.watch") { (_: String, _: CallContext, _: StreamWriter<Reading>) in }
        try router.registerClientStream("sensors.upload") { (_: Int, _: StreamItems<Calibration>, _: CallContext) in 0 }
        try router.registerBidirectionalStream("sensors.chat") { (_: Int, _: StreamItems<String>, _: CallContext, _: StreamWriter<Int>) in }
        try router.property("sensors.unit", initial: Unit.celsius)
        let schema = router.schema
        #expect(schema.method("sensors.read") == MethodSchema(name: "sensors.read", argument: .primitive(.string), result: .named("Reading")))
        #expect(schema.method("sensors.reset")?.result == .primitive(.none))
        #expect(schema.method("sensors.watch") == MethodSchema(
            name: "sensors.watch", kind: .serverStream, argument: .primitive(.string), result: .primitive(.none), item: .named("Reading")))
        #expect(schema.method("sensors.upload")?.kind == .clientStream)
        #expect(schema.method("sensors.upload")?.input == .named("Calibration"))
        #expect(schema.method("sensors.chat")?.item == .primitive(.int64))
        #expect(schema.method("sensors.chat")?.input == .primitive(.string))
        #expect(schema.method("intercom.property.sensors.unit.set")?.argument == .named("Unit"))
        #expect(schema.types["OnlyEncodable"]?.note?.contains("Codable") == true)
        #expect(schema.types["Reading"] != nil)
        router.unregister("sensors.read")
        #expect(router.schema.method("sensors.read") == nil)
    }
}
