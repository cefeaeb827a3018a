import Foundation
import IntercomWire
import NIOCore
import Testing

private struct Sample: Codable, Sendable {
    var name: String
    var ratio: Double
    var small: Int8
    var count: UInt16
    var negative: Int64
    var flag: Bool
    var unit: Unit
    var tags: [String]
    var scores: [String: Int]
    var nested: Inner?
    var missing: Inner?
    var command: Command
    var commands: [Command]
    var raw: Data
    var id: UUID
    var maybe: [Int?]
}

private struct Inner: Codable, Sendable {
    var depth: Int32
    var note: String?
}

private enum Unit: String, Codable, Sendable { case metre, second }

private enum Command: Codable, Sendable {
    case move(x: Int, y: Int)
    case say(String)
    case stop
}

/// `intercom monitor` shows binary payloads as JSON through the schema: the
/// renderer must read exactly what `BinaryEncoder` writes — checked against
/// `JSONEncoder`'s output for the same value — and refuse, never crash on,
/// anything else.
struct BinaryPayloadRendererTests {
    private static let value = Sample(
        name: "probe \"1\"\n", ratio: 2.5, small: -7, count: 65_000, negative: -1_234_567_890_123, flag: true, unit: .second,
        tags: ["a", "b"], scores: ["x": 1, "y": -2], nested: Inner(depth: 3, note: nil), missing: nil,
        command: .move(x: 1, y: -1), commands: [.say("hi"), .stop], raw: Data([0, 1, 2, 255]),
        id: UUID(uuidString: "E621E1F8-C36C-495A-93FC-0C247A3E6E5F")!, maybe: [1, nil, 3])

    private func render(_ bytes: [UInt8]) throws -> String {
        var schemas = WireSchemas()
        let shape = schemas.shape(of: Sample.self)
        return try BinaryPayloadRenderer(types: schemas.types).render(bytes, as: shape)
    }

    private var encoded: [UInt8] {
        let buffer = try! BinaryEncoder().encode(Self.value)
        return Array(buffer.readableBytesView)
    }

    @Test func readsWhatTheBinaryEncoderWroteAsJSONWould() throws {
        let rendered = try self.render(self.encoded)
        let fromRenderer = try JSONSerialization.jsonObject(with: Data(rendered.utf8)) as? NSDictionary
        let fromJSON = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(Self.value)) as? NSDictionary
        #expect(fromRenderer != nil)
        #expect(fromRenderer == fromJSON, "\(rendered)")
    }

    @Test func cutShortOrGarbledPayloadsAreRefusedNotCrashedOn() throws {
        let bytes = self.encoded
        for length in 0..<bytes.count {
            #expect(throws: BinaryPayloadRenderer.RenderError.self) { try self.render(Array(bytes.prefix(length))) }
        }
        // Every single-byte change either renders or is refused; extra bytes are refused.
        for index in bytes.indices {
            for flip in [UInt8(0x01), 0x80, 0xFF] {
                var mutated = bytes
                mutated[index] ^= flip
                _ = try? self.render(mutated)
            }
        }
        #expect(throws: BinaryPayloadRenderer.RenderError.self) { try self.render(bytes + [0]) }
        // A count that promises more than the payload holds.
        #expect(throws: BinaryPayloadRenderer.RenderError.self) {
            try BinaryPayloadRenderer(types: [:]).render([0xFF, 0xFF, 0xFF, 0xFF, 0x0F], as: .array(.primitive(.string)))
        }
    }
}
