import Foundation
import IntercomWire
import NIOCore
import Testing

/// Every Codable shape the binary coder promises, round-tripped through both
/// codecs with many generated values (a property test with a seeded generator).
@Suite struct BinaryCoderRoundTripTests {
    struct Point: Codable, Hashable { var x: Double; var y: Double }

    final class Node: Codable, Equatable {
        var name: String
        var children: [Node]
        var parentWeight: Float?
        init(name: String, children: [Node], parentWeight: Float?) {
            self.name = name; self.children = children; self.parentWeight = parentWeight
        }
        static func == (a: Node, b: Node) -> Bool {
            a.name == b.name && a.children == b.children && a.parentWeight == b.parentWeight
        }
    }

    enum Shape: Codable, Hashable {
        case circle(center: Point, radius: Double)
        case polygon([Point])
        case labelled(String, Int)
        case empty
    }

    enum Colour: String, Codable, Hashable { case red, green, blue }
    enum Level: Int, Codable, Hashable { case low = 1, high = 99 }

    struct Everything: Codable, Equatable {
        var i: Int, i8: Int8, i16: Int16, i32: Int32, i64: Int64
        var u: UInt, u8: UInt8, u16: UInt16, u32: UInt32, u64: UInt64
        var f: Float, d: Double, b: Bool, s: String
        var optionalSome: Int?, optionalNone: String?
        var nestedOptional: [Int?]
        var array: [String], set: Set<Int>
        var stringKeys: [String: Int], intKeys: [Int: String], structKeys: [Point: Colour]
        var data: Data, bytes: [UInt8]
        var date: Date, uuid: UUID, url: URL
        var shape: Shape, shapes: [Shape], colour: Colour, level: Level
        var tree: Node
        var nestedArrays: [[Int]]
    }

    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func randomString(_ g: inout SeededGenerator) -> String {
        let alphabet = Array("abcXYZ019 ._-é漢🎉\u{0}\n")
        return String((0..<Int.random(in: 0...24, using: &g)).map { _ in alphabet.randomElement(using: &g)! })
    }

    static func randomShape(_ g: inout SeededGenerator) -> Shape {
        switch Int.random(in: 0..<4, using: &g) {
        case 0: .circle(center: Point(x: .random(in: -1e6...1e6, using: &g), y: 0.5), radius: .random(in: 0...10, using: &g))
        case 1: .polygon((0..<Int.random(in: 0...5, using: &g)).map { _ in Point(x: .random(in: -1...1, using: &g), y: -2) })
        case 2: .labelled(randomString(&g), .random(in: .min ... .max, using: &g))
        default: .empty
        }
    }

    static func randomTree(_ g: inout SeededGenerator, depth: Int) -> Node {
        let children = depth == 0 ? [] : (0..<Int.random(in: 0...3, using: &g)).map { _ in randomTree(&g, depth: depth - 1) }
        return Node(name: randomString(&g), children: children, parentWeight: Bool.random(using: &g) ? .random(in: 0...1, using: &g) : nil)
    }

    static func randomEverything(_ g: inout SeededGenerator) -> Everything {
        Everything(
            i: .random(in: .min ... .max, using: &g), i8: .random(in: .min ... .max, using: &g),
            i16: .random(in: .min ... .max, using: &g), i32: .random(in: .min ... .max, using: &g),
            i64: [Int64.min, .max, 0, -1, .random(in: .min ... .max, using: &g)].randomElement(using: &g)!,
            u: .random(in: .min ... .max, using: &g), u8: .random(in: .min ... .max, using: &g),
            u16: .random(in: .min ... .max, using: &g), u32: .random(in: .min ... .max, using: &g),
            u64: [UInt64.max, 0, 127, 128, .random(in: .min ... .max, using: &g)].randomElement(using: &g)!,
            f: .random(in: -1e30...1e30, using: &g), d: [Double.pi, -0.0, .greatestFiniteMagnitude, .random(in: -1...1, using: &g)].randomElement(using: &g)!,
            b: .random(using: &g), s: randomString(&g),
            optionalSome: .random(in: -5...5, using: &g), optionalNone: nil,
            nestedOptional: [1, nil, 3, nil],
            array: (0..<Int.random(in: 0...6, using: &g)).map { _ in randomString(&g) },
            set: Set((0..<Int.random(in: 0...6, using: &g)).map { _ in Int.random(in: -100...100, using: &g) }),
            stringKeys: Dictionary(uniqueKeysWithValues: (0..<Int.random(in: 0...4, using: &g)).map { ("k\($0)", $0) }),
            intKeys: [Int.random(in: -9...9, using: &g): randomString(&g), 1000: "x"],
            structKeys: [Point(x: 1, y: 2): .green, Point(x: -1, y: .random(in: 0...1, using: &g)): .blue],
            data: Data((0..<Int.random(in: 0...300, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }),
            bytes: (0..<Int.random(in: 0...300, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) },
            date: Date(timeIntervalSince1970: Double(Int.random(in: 0...2_000_000_000, using: &g))),
            uuid: UUID(), url: URL(string: "https://example.com/a b?q=\(Int.random(in: 0...9, using: &g))".replacingOccurrences(of: " ", with: "%20"))!,
            shape: randomShape(&g), shapes: (0..<3).map { _ in randomShape(&g) },
            colour: [.red, .green, .blue].randomElement(using: &g)!, level: Bool.random(using: &g) ? .low : .high,
            tree: randomTree(&g, depth: 3),
            nestedArrays: [[], [1], [2, 3, 4]]
        )
    }

    @Test(arguments: [PayloadCodec.binary(), PayloadCodec.json()].map { CodecBox($0) })
    func everyShapeRoundTrips(codec: CodecBox) throws {
        var g = SeededGenerator(state: 42)
        for _ in 0..<300 {
            let value = Self.randomEverything(&g)
            var buffer = ByteBuffer()
            try codec.codec.encode(value, into: &buffer)
            let back = try codec.codec.decode(Everything.self, from: buffer)
            #expect(back == value)
        }
    }

    @Test func topLevelPrimitivesAndCollectionsRoundTrip() throws {
        func check<T: Codable & Equatable>(_ value: T) throws {
            let encoded = try BinaryEncoder().encode(value)
            #expect(try BinaryDecoder().decode(T.self, from: encoded) == value, "\(T.self) \(value)")
        }
        try check(0); try check(Int.min); try check(UInt64.max); try check(true); try check("")
        try check(Optional<Int>.none); try check(Optional(Optional(3)))
        try check([Int?]()); try check(Set(["a", "b"])); try check([[String: [Int]]]())
        try check(Shape.empty); try check(Shape.labelled("x", -1))
        try check(Data()); try check([UInt8](repeating: 7, count: 70_000))
        try check(Float.nan.isNaN); try check(-Float.infinity)
    }

    struct Empty: Codable, Hashable {}
    final class EmptyClass: Codable, Equatable {
        static func == (lhs: EmptyClass, rhs: EmptyClass) -> Bool { true }
    }
    struct HoldsEmpties: Codable, Equatable {
        var before: Int
        var empty: Empty
        var empties: [Empty]
        var optionalEmpty: Empty?
        var keyed: [Empty: Int]
        var object: EmptyClass
        var after: String
    }

    /// Types without stored properties (command markers like `struct Snapshot: Codable {}`):
    /// their synthesised encoder opens an empty container that their decoder never reads.
    @Test func typesWithoutStoredPropertiesRoundTrip() throws {
        func check<T: Codable & Equatable>(_ value: T) throws {
            let encoded = try BinaryEncoder().encode(value)
            #expect(try BinaryDecoder().decode(T.self, from: encoded) == value, "\(T.self)")
        }
        try check(Empty())
        try check([Empty(), Empty(), Empty()])
        try check(HoldsEmpties(
            before: 0, empty: Empty(), empties: [Empty(), Empty()], optionalEmpty: Empty(), keyed: [Empty(): 0],
            object: EmptyClass(), after: "end"))
        try check(HoldsEmpties(
            before: -1, empty: Empty(), empties: [], optionalEmpty: nil, keyed: [:], object: EmptyClass(), after: ""))
    }

    @Test func rawBytesAreNotInflated() throws {
        let bytes = [UInt8](repeating: 0xAB, count: 1 << 16)
        let encoded = try BinaryEncoder().encode(bytes)
        #expect(encoded.readableBytes <= bytes.count + 4)
        let data = try BinaryEncoder().encode(Data(bytes))
        #expect(data.readableBytes <= bytes.count + 4)
    }

    @Test func smallIntegersAreCompact() throws {
        #expect(try BinaryEncoder().encode(5).readableBytes == 1)
        #expect(try BinaryEncoder().encode(-1).readableBytes == 1)
        #expect(try BinaryEncoder().encode(Point(x: 1, y: 2)).readableBytes < 30)
    }
}

/// Wraps a codec so it can be a test argument with a readable name.
struct CodecBox: Sendable, CustomTestStringConvertible {
    let codec: PayloadCodec
    init(_ codec: PayloadCodec) { self.codec = codec }
    var testDescription: String { "\(self.codec.id)" }
}
