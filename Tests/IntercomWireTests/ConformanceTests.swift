import Foundation
import IntercomWire
import NIOCore
import Testing

/// The conformance vectors in docs/conformance (described in docs/PROTOCOL.md,
/// "Conformance vectors"), checked byte for byte: what another language's
/// implementation is tested against is exactly what this one writes and reads.
@Suite struct ConformanceTests {
    // MARK: Frames

    struct FrameVectors: Decodable {
        struct Valid: Decodable {
            var name, hex, payload: String
            var kind: UInt8
            var flags: UInt16
            var id: UInt64
            var method: String?
            var timeoutNanoseconds: Int64?
            var traceContext: [String: String]?
            var decodeOnly: Bool?
        }
        struct Invalid: Decodable { var name, hex, error: String }
        var frames: [Valid]
        var invalid: [Invalid]
    }

    @Test func framesDecodeToTheirFieldsAndEncodeToTheirBytes() throws {
        let vectors = try Vectors.load(FrameVectors.self, "frames.json")
        #expect(vectors.frames.count >= 10)
        for vector in vectors.frames {
            let expected = Frame(
                kind: try #require(FrameKind(rawValue: vector.kind), "\(vector.name)"),
                flags: FrameFlags(rawValue: vector.flags), id: vector.id, method: vector.method,
                timeout: vector.timeoutNanoseconds.map { .nanoseconds($0) }, payload: ByteBuffer(bytes: try Vectors.bytes(vector.payload)))
            var input = ByteBuffer(bytes: try Vectors.bytes(vector.hex))
            let decoded = try #require(try FrameDecoder().next(from: &input), "\(vector.name): not a whole frame")
            #expect(input.readableBytes == 0, "\(vector.name): \(input.readableBytes) bytes left over")
            #expect(FrameDecoderTests.same(decoded, expected), "\(vector.name): decoded \(decoded)")
            #expect(decoded.traceContext == vector.traceContext, "\(vector.name): trace context")
            if let context = vector.traceContext {
                // Written the way a tracing peer writes it: after the method, before the payload.
                var written = ByteBuffer()
                var mark = FrameHeader.begin(into: &written, kind: expected.kind, flags: expected.flags, id: expected.id, method: expected.method)
                mark = FrameHeader.addTraceContext(context, to: mark, in: &written)
                written.writeImmutableBuffer(expected.payload)
                FrameHeader.finish(mark, in: &written)
                #expect(Vectors.hex(written) == Vectors.hex(try Vectors.bytes(vector.hex)), "\(vector.name): written")
            }
            if vector.decodeOnly != true {
                var written = ByteBuffer()
                FrameHeader.write(expected, into: &written)
                #expect(Vectors.hex(written) == Vectors.hex(try Vectors.bytes(vector.hex)), "\(vector.name)")
            }
        }
    }

    @Test func invalidFramesAreRefusedWithTheirCodeFromTheirBytesAlone() throws {
        let vectors = try Vectors.load(FrameVectors.self, "frames.json")
        #expect(vectors.invalid.count >= 8)
        for vector in vectors.invalid {
            var input = ByteBuffer(bytes: try Vectors.bytes(vector.hex))
            #expect(Vectors.violation { _ = try FrameDecoder().next(from: &input) } == vector.error, "\(vector.name)")
        }
    }

    // MARK: Hellos

    struct HelloVectors: Decodable {
        struct Fields: Decodable {
            var minVersion, maxVersion, preferredCodec, codecMask: UInt8
            var maxFrameSize, pid: UInt32?
            var capabilities: UInt64?
            var name: String?
            var customCodecs: [String]?

            var hello: Hello {
                var hello = Hello(
                    minVersion: self.minVersion, maxVersion: self.maxVersion,
                    preferredCodec: CodecID(rawValue: self.preferredCodec),
                    supportedCodecs: Set((0..<8).filter { self.codecMask & (1 << $0) != 0 }.map { CodecID(rawValue: UInt8($0)) }),
                    maxFrameSize: self.maxFrameSize ?? 1 << 20, pid: self.pid ?? 1, capabilities: self.capabilities ?? 0,
                    name: self.name ?? "side")
                hello.customCodecs = self.customCodecs ?? []
                return hello
            }
        }
        struct Valid: Decodable {
            var name, hex: String
            var frameHex: String?
            var hello: Fields
        }
        struct Agreement: Decodable {
            var name: String
            var a, b: Fields
            var version, codec: UInt8?
            var customCodec: String?
            var error: String?
        }
        struct Invalid: Decodable { var name, hex: String }
        var hellos: [Valid]
        var agreements: [Agreement]
        var invalid: [Invalid]
    }

    @Test func hellosParseToTheirFieldsAndWriteTheirBytes() throws {
        let vectors = try Vectors.load(HelloVectors.self, "hellos.json")
        #expect(vectors.hellos.count >= 3)
        for vector in vectors.hellos {
            let bytes = try Vectors.bytes(vector.hex)
            #expect(try Hello(from: ByteBuffer(bytes: bytes)) == vector.hello.hello, "\(vector.name)")
            var written = ByteBuffer()
            vector.hello.hello.write(into: &written)
            #expect(Vectors.hex(written) == Vectors.hex(bytes), "\(vector.name)")
            if let frameHex = vector.frameHex {
                var frame = ByteBuffer()
                FrameHeader.write(Frame(kind: .hello, id: 0, payload: written), into: &frame)
                #expect(Vectors.hex(frame) == Vectors.hex(try Vectors.bytes(frameHex)), "\(vector.name): the frame")
            }
        }
        for vector in vectors.invalid {
            let bytes = try Vectors.bytes(vector.hex)
            #expect(Vectors.violation { _ = try Hello(from: ByteBuffer(bytes: bytes)) } == "malformedHandshake", "\(vector.name)")
        }
    }

    @Test func bothSidesReachTheAgreementOfEachVector() throws {
        let vectors = try Vectors.load(HelloVectors.self, "hellos.json")
        #expect(vectors.agreements.count >= 6)
        for vector in vectors.agreements {
            for (this, other) in [(vector.a.hello, vector.b.hello), (vector.b.hello, vector.a.hello)] {
                if let error = vector.error {
                    #expect(Vectors.violation { _ = try this.negotiate(with: other) } == error, "\(vector.name)")
                } else {
                    let agreement = try this.negotiate(with: other)
                    #expect(agreement.version == vector.version, "\(vector.name)")
                    #expect(agreement.codec.rawValue == vector.codec, "\(vector.name)")
                    #expect(agreement.customCodec == vector.customCodec, "\(vector.name)")
                }
            }
        }
    }

    // MARK: Error bodies

    struct ErrorVectors: Decodable {
        struct Body: Decodable { var name, hex, code, typeName, message, details: String }
        struct Invalid: Decodable { var name, hex: String }
        var bodies: [Body]
        var invalid: [Invalid]
        var connectionErrorCodes: [String]
    }

    @Test func errorBodiesParseToTheirFieldsAndWriteTheirBytes() throws {
        let vectors = try Vectors.load(ErrorVectors.self, "errors.json")
        #expect(vectors.bodies.count >= 4)
        for vector in vectors.bodies {
            let bytes = try Vectors.bytes(vector.hex)
            let parsed = try ErrorBody(from: ByteBuffer(bytes: bytes))
            #expect(parsed.code == vector.code && parsed.typeName == vector.typeName && parsed.message == vector.message, "\(vector.name)")
            #expect(Vectors.hex(parsed.details) == Vectors.hex(try Vectors.bytes(vector.details)), "\(vector.name)")
            var written = ByteBuffer()
            ErrorBody(code: vector.code, typeName: vector.typeName, message: vector.message, details: ByteBuffer(bytes: try Vectors.bytes(vector.details)))
                .write(into: &written)
            #expect(Vectors.hex(written) == Vectors.hex(bytes), "\(vector.name)")
        }
        for vector in vectors.invalid {
            #expect(throws: ProtocolError.self, "\(vector.name)") { _ = try ErrorBody(from: ByteBuffer(bytes: try Vectors.bytes(vector.hex))) }
        }
    }

    /// A connection closed over a violation says which one: the code in the
    /// error frame is the violation's name, never a catch-all.
    @Test func connectionErrorsNameTheirViolation() throws {
        let vectors = try Vectors.load(ErrorVectors.self, "errors.json")
        #expect(ProtocolError.Code.all.map(\.description) == vectors.connectionErrorCodes)
        for code in ProtocolError.Code.all {
            let body = ErrorBody(connectionError: ProtocolError(code, "why"))
            #expect(body.code == code.description)
            #expect(body.typeName == "IntercomWire.ProtocolError")
            #expect(ProtocolError.Code(name: code.description) == code)
        }
    }

    // MARK: Binary codec

    struct BinaryVectors: Decodable {
        struct Value: Decodable { var name, type, json, hex: String }
        var values: [Value]
    }

    @Test func everyCodableShapeEncodesToItsBytesAndBack() throws {
        let vectors = try Vectors.load(BinaryVectors.self, "binary.json")
        let cases = BinaryShapes.cases
        #expect(Set(vectors.values.map(\.name)) == Set(cases.keys), "every vector has a Swift value, and every value a vector")
        for vector in vectors.values {
            let check = try #require(cases[vector.name], "no Swift value for '\(vector.name)'")
            try check(vector.name, Vectors.bytes(vector.hex), Array(vector.json.utf8))
        }
    }
}

/// The Swift values the binary vectors describe, by vector name.
enum BinaryShapes {
    struct Labelled: Codable, Equatable { var a: Int; var b: String? }
    struct Point: Codable, Equatable { var x, y: Int }
    struct Outer: Codable, Equatable { var inner: Point; var tags: [String] }
    struct IntKeyed: Codable, Equatable {
        var id: Int
        var flag: Bool
        enum CodingKeys: Int, CodingKey {
            case id = 1
            case flag = -2
        }
    }
    struct Snapshot: Codable, Equatable {}
    struct Meters: Codable, Equatable {
        var value: Double
        init(_ value: Double) { self.value = value }
        init(from decoder: any Decoder) throws { self.value = try decoder.singleValueContainer().decode(Double.self) }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(self.value)
        }
    }
    struct Pair: Codable, Equatable {
        var first, second: Int
        init(_ first: Int, _ second: Int) { (self.first, self.second) = (first, second) }
        init(from decoder: any Decoder) throws {
            var container = try decoder.unkeyedContainer()
            self.first = try container.decode(Int.self)
            self.second = try container.decode(Int.self)
        }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.unkeyedContainer()
            try container.encode(self.first)
            try container.encode(self.second)
        }
    }
    enum Color: String, Codable, Equatable { case red }
    enum Level: Int, Codable, Equatable { case high = 3 }
    enum Shape: Codable, Equatable {
        case circle(radius: Double)
        case square(Int)
        case empty
    }

    typealias Check = @Sendable (_ name: String, _ bytes: [UInt8], _ json: [UInt8]) throws -> Void

    /// Encodes `value` and compares with the bytes; decodes the bytes and the
    /// JSON text and compares with `value`.
    static func check<T: Codable & Equatable & Sendable>(_ value: T) -> Check {
        { name, bytes, json in
            let encoded = try BinaryEncoder().encode(value)
            #expect(Vectors.hex(encoded) == Vectors.hex(bytes), "\(name): encoded")
            #expect(try BinaryDecoder().decode(T.self, from: ByteBuffer(bytes: bytes)) == value, "\(name): decoded")
            #expect(try PayloadCodec.json().decode(T.self, from: ByteBuffer(bytes: json)) == value, "\(name): from JSON")
        }
    }

    static let cases: [String: Check] = [
        "Bool true": check(true),
        "UInt8 200": check(UInt8(200)),
        "Int8 -2": check(Int8(-2)),
        "Int 0": check(0),
        "Int 1": check(1),
        "Int -1": check(-1),
        "Int 64": check(64),
        "Int -65": check(-65),
        "Int max": check(Int.max),
        "Int min": check(Int.min),
        "Int16 -300": check(Int16(-300)),
        "UInt32 300": check(UInt32(300)),
        "UInt64 max": check(UInt64.max),
        "Double 1.5": check(1.5),
        "Float -2": check(Float(-2)),
        "String empty": check(""),
        "String with UTF-8": check("héllo"),
        "[UInt8]: length and raw bytes": check([UInt8]([1, 2, 3])),
        "Data: like [UInt8]": check(Data([1, 2, 3])),
        "[Int]: varint count": check([1, -1]),
        "[String]": check(["a"]),
        "Set<Int>": check(Set([5])),
        "[String: Int]: count, then key and value": check(["k": 1]),
        "Int? nil at the top level: presence byte": check(Int?.none),
        "Int? 5 at the top level": check(Int?.some(5)),
        "[Int?]: a presence byte per element": check([nil, 2] as [Int?]),
        "struct with a nil optional field: the field is absent": check(Labelled(a: 1, b: nil)),
        "struct with a present optional field: no presence byte": check(Labelled(a: 1, b: "x")),
        "nested struct and array": check(Outer(inner: Point(x: 1, y: -1), tags: ["a"])),
        "struct with integer coding keys": check(IntKeyed(id: 9, flag: true)),
        "struct without stored properties": check(Snapshot()),
        "single-value wrapper: just the value": check(Meters(2)),
        "custom unkeyed container: u32 count": check(Pair(1, 2)),
        "enum with String raw values: the raw value": check(Color.red),
        "enum with Int raw values: the raw value": check(Level.high),
        "enum case with a labelled associated value": check(Shape.circle(radius: 2)),
        "enum case with an unlabelled associated value: key _0": check(Shape.square(7)),
        "enum case without associated values: an empty nested container": check(Shape.empty),
        "UUID: 16 bytes": check(UUID(uuidString: "00112233-4455-6677-8899-AABBCCDDEEFF")!),
        "Date: Double seconds since 1970": check(Date(timeIntervalSince1970: 86_400)),
        "URL: its absolute string": check(URL(string: "https://example.com/a")!),
    ]
}

/// Reading the vector files.
enum Vectors {
    /// docs/conformance, found from this file's place in the repository.
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/conformance")

    static func load<T: Decodable>(_ type: T.Type, _ file: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: self.directory.appendingPathComponent(file)))
    }

    /// The bytes of a hex string that may contain spaces.
    static func bytes(_ hex: String) throws -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace }.utf8)
        guard digits.count % 2 == 0 else { throw VectorError("odd number of hex digits in '\(hex)'") }
        return try stride(from: 0, to: digits.count, by: 2).map { index in
            guard let byte = UInt8(String(decoding: digits[index...index + 1], as: UTF8.self), radix: 16) else {
                throw VectorError("not hex: '\(hex)'")
            }
            return byte
        }
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    static func hex(_ buffer: ByteBuffer) -> String { self.hex(buffer.readableBytesView) }

    /// The name of the ``ProtocolError`` code `body` throws, or nil if it throws none.
    static func violation(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return (error as? ProtocolError)?.code.description ?? "not a ProtocolError: \(error)"
        }
    }

    struct VectorError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }
}
