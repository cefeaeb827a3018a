import Intercom
import Testing

// Two versions of a service's types, as two releases of one program would have them.
private enum V1 {
    struct Request: Codable, Sendable {
        var sensor: String
        var samples: Int32
    }
    struct Reply: Codable, Sendable {
        var value: Double
        var unit: Unit
        var note: String?
    }
    enum Unit: String, Codable, Sendable { case celsius, kelvin }
}

private enum V2 {
    /// One change of each kind, applied one at a time by `router(_:)`.
    struct AddedRequired: Codable, Sendable {
        var sensor: String
        var samples: Int32
        var window: Int
    }
    struct AddedOptional: Codable, Sendable {
        var sensor: String
        var samples: Int32
        var window: Int?
    }
    struct Reordered: Codable, Sendable {
        var samples: Int32
        var sensor: String
    }
    struct Widened: Codable, Sendable {
        var sensor: String
        var samples: Int64
    }
    struct Retyped: Codable, Sendable {
        var sensor: Int
        var samples: Int32
    }
    struct ReplyWithoutUnit: Codable, Sendable {
        var value: Double
        var note: String?
    }
    struct ReplyOptionalValue: Codable, Sendable {
        var value: Double?
        var unit: V1.Unit
        var note: String?
    }
    struct ReplyMoreUnits: Codable, Sendable {
        var value: Double
        var unit: Unit
        var note: String?
    }
    enum Unit: String, Codable, Sendable { case celsius, kelvin, fahrenheit }
    /// V1.Reply under another name: the wire does not see names.
    struct Measurement: Codable, Sendable {
        var value: Double
        var unit: V1.Unit
        var note: String?
    }
}

private func schema<Request: Codable & Sendable, Reply: Codable & Sendable>(
    _: Request.Type, _: Reply.Type, extra: Bool = false, withoutRead: Bool = false
) throws -> ServiceSchema {
    let router = Router()
    if !withoutRead {
        try router.register("sensors.read") { (_: Request, _: CallContext) -> Reply in throw IntercomError(.unknownMethod, "") }
    }
    try router.register("sensors.ping") { (_: Int, _: CallContext) in 1 }
    if extra { try router.register("sensors.calibrate") { (_: Int, _: CallContext) in } }
    return router.schema
}

/// The wire-compatibility check: every breaking kind is flagged with whom it
/// breaks, safe changes pass, and the codec's rules decide the in-between ones.
struct SchemaCompatibilityTests {
    private let old = try! schema(V1.Request.self, V1.Reply.self)

    private func compare(_ new: ServiceSchema, codec: SchemaCompatibility.Codec = .binary) -> [String] {
        SchemaCompatibility.compare(old: self.old, new: new, codec: codec).changes.map(\.description)
    }

    @Test func noChangeAndARenamedTypeAreCompatible() throws {
        #expect(self.compare(self.old).isEmpty)
        #expect(self.compare(try schema(V1.Request.self, V2.Measurement.self)).isEmpty)
    }

    @Test func methodsAddedAndRemoved() throws {
        #expect(self.compare(try schema(V1.Request.self, V1.Reply.self, extra: true)) == ["safe sensors.calibrate: method added"])
        #expect(
            self.compare(try schema(V1.Request.self, V1.Reply.self, withoutRead: true))
                == ["BREAKING (old clients) sensors.read: method removed"])
    }

    @Test func aNewRequiredArgumentFieldBreaksOldClients() throws {
        for codec in SchemaCompatibility.Codec.allCases {
            let changes = self.compare(try schema(V2.AddedRequired.self, V1.Reply.self), codec: codec)
            let oldServers = codec == .binary ? ", old servers" : ""
            #expect(changes == ["BREAKING (old clients\(oldServers)) sensors.read argument.window: field added, required"])
        }
    }

    @Test func aNewOptionalFieldIsSafeInJSONButNotForOldBinaryReaders() throws {
        let new = try schema(V2.AddedOptional.self, V1.Reply.self)
        #expect(self.compare(new, codec: .json) == ["safe sensors.read argument.window: field added, optional"])
        #expect(self.compare(new, codec: .binary) == ["BREAKING (old servers) sensors.read argument.window: field added, optional"])
    }

    @Test func reorderingBreaksOnlyTheBinaryCodec() throws {
        let new = try schema(V2.Reordered.self, V1.Reply.self)
        #expect(self.compare(new, codec: .json).isEmpty)
        #expect(self.compare(new) == ["BREAKING (old clients, old servers) sensors.read argument: fields reordered (sensor, samples → samples, sensor)"])
    }

    @Test func aRetypedFieldBreaksBothAndWideningOnlyOldReaders() throws {
        #expect(
            self.compare(try schema(V2.Retyped.self, V1.Reply.self))
                == ["BREAKING (old clients, old servers) sensors.read argument.sensor: retyped from String to Int64"])
        // Old clients write Int32 that the new Int64 reads; new clients may write more than old services read.
        #expect(
            self.compare(try schema(V2.Widened.self, V1.Reply.self))
                == ["BREAKING (old servers) sensors.read argument.samples: retyped from Int32 to Int64"])
    }

    @Test func resultChangesBreakOldClients() throws {
        #expect(
            self.compare(try schema(V1.Request.self, V2.ReplyWithoutUnit.self))
                == ["BREAKING (old clients, old servers) sensors.read result.unit: field removed (it was required)"])
        #expect(
            self.compare(try schema(V1.Request.self, V2.ReplyWithoutUnit.self), codec: .json)
                == ["BREAKING (old clients) sensors.read result.unit: field removed (it was required)"])
        #expect(
            self.compare(try schema(V1.Request.self, V2.ReplyOptionalValue.self))
                == ["BREAKING (old clients) sensors.read result.value: became optional"])
        #expect(
            self.compare(try schema(V1.Request.self, V2.ReplyMoreUnits.self))
                == ["BREAKING (old clients) sensors.read result.unit: value 'fahrenheit' added"])
    }

    @Test func theReportRoundTripsAndSummarises() throws {
        let report = SchemaCompatibility.compare(old: self.old, new: try schema(V2.AddedRequired.self, V2.ReplyMoreUnits.self))
        #expect(!report.isCompatible)
        #expect(report.breaking.count == 2)
        #expect(report.breaking.map(\.path) == ["argument.window", "result.unit"])
        #expect(report.description.split(separator: "\n").count == 2)
        let changeKinds = report.changes.map(\.breaks)
        #expect(changeKinds == [[.oldClients, .oldServers], [.oldClients]])
    }
}
