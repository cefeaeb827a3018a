import Foundation
import IntercomWire
import NIOCore
import Testing

/// Random and mutated input into the frame decoder and the binary decoder:
/// nothing may crash, and every failure must be a typed error.
@Suite struct FuzzTests {
    struct Payload: Codable {
        var name: String
        var values: [Int]
        var nested: [String: [Double]]
        var blob: Data
        var maybe: Payload2?
        var choice: Choice
    }
    struct Payload2: Codable { var flag: Bool; var tag: UInt8 }
    enum Choice: Codable { case a(Int), b(String, [UInt16]), c }

    static let seedFrames: [ByteBuffer] = {
        var frames: [ByteBuffer] = []
        for i in 0..<8 {
            let payload = try! BinaryEncoder().encode(
                Payload(
                    name: "n\(i)", values: Array(0..<i), nested: ["k": [1.5, Double(i)]], blob: Data([1, 2, 3]),
                    maybe: i % 2 == 0 ? Payload2(flag: true, tag: 3) : nil, choice: i % 3 == 0 ? .b("s", [1, 2]) : .a(i)))
            var b = ByteBuffer()
            FrameHeader.write(Frame(kind: .call, id: UInt64(i), method: "m.\(i)", timeout: .seconds(1), payload: payload), into: &b)
            frames.append(b)
        }
        return frames
    }()

    struct Mutator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return state
        }
        mutating func mutate(_ input: ByteBuffer) -> ByteBuffer {
            var bytes = Array(input.readableBytesView)
            let operation = Int.random(in: 0..<6, using: &self)
            switch operation {
            case 0:  // flip bits
                for _ in 0..<Int.random(in: 1...4, using: &self) where !bytes.isEmpty {
                    bytes[Int.random(in: 0..<bytes.count, using: &self)] ^= UInt8(1 << Int.random(in: 0..<8, using: &self))
                }
            case 1:  // set a byte to an interesting value
                if !bytes.isEmpty { bytes[Int.random(in: 0..<bytes.count, using: &self)] = [0, 0xFF, 0x7F, 0x80, 1].randomElement(using: &self)! }
            case 2:  // truncate
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &self)))
            case 3:  // insert random bytes
                let at = Int.random(in: 0...bytes.count, using: &self)
                bytes.insert(contentsOf: (0..<Int.random(in: 1...8, using: &self)).map { _ in UInt8.random(in: 0...255, using: &self) }, at: at)
            case 4:  // entirely random
                bytes = (0..<Int.random(in: 0...64, using: &self)).map { _ in UInt8.random(in: 0...255, using: &self) }
            default:  // keep the header valid, scramble the body
                for i in FrameHeader.size..<bytes.count where Bool.random(using: &self) { bytes[i] = .random(in: 0...255, using: &self) }
            }
            return ByteBuffer(bytes: bytes)
        }
    }

    @Test func frameDecoderAndBinaryDecoderSurviveMutatedInput() {
        var rng = Mutator(state: 0xDEAD_BEEF_CAFE_F00D)
        let limits = WireLimits.defaults { $0.maxFrameSize = 1 << 16 }
        var frames = 0, protocolErrors = 0, decodingErrors = 0, decoded = 0
        let iterations = 120_000
        for _ in 0..<iterations {
            var stream = rng.mutate(Self.seedFrames.randomElement(using: &rng)!)
            do {
                while let frame = try FrameDecoder(limits: limits).next(from: &stream) {
                    frames += 1
                    do {
                        _ = try BinaryDecoder(limits: limits).decode(Payload.self, from: frame.payload)
                        decoded += 1
                    } catch is DecodingError {
                        decodingErrors += 1
                    } catch {
                        Issue.record("binary decoder threw an untyped error: \(type(of: error)) \(error)")
                    }
                }
            } catch {
                // typed throws: the only error the frame decoder can throw is ProtocolError
                protocolErrors += 1
            }
        }
        // The mutation mix must actually exercise both decoders' failure paths.
        #expect(frames > 10_000)
        #expect(protocolErrors > 1_000)
        #expect(decodingErrors > 1_000)
        #expect(decoded > 100)
    }

    @Test func binaryDecoderSurvivesRandomBytesForManyTypes() {
        var rng = Mutator(state: 12345)
        for _ in 0..<30_000 {
            let buffer = ByteBuffer(bytes: (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            do { _ = try BinaryDecoder().decode(Payload.self, from: buffer) } catch is DecodingError {} catch { Issue.record("\(error)") }
            do { _ = try BinaryDecoder().decode([String: [Choice]].self, from: buffer) } catch is DecodingError {} catch { Issue.record("\(error)") }
            do { _ = try BinaryDecoder().decode(Set<UUID>.self, from: buffer) } catch is DecodingError {} catch { Issue.record("\(error)") }
        }
    }
}
