import Foundation
import IntercomWire
import NIOCore
import Testing

/// The decoder's input checks: each bad input is a `DecodingError` naming what was wrong.
@Suite struct BinaryDecoderErrorTests {
    struct Exposure: Codable, Equatable { var ms: Int; var label: String }
    struct Other: Codable { var volume: Double }

    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "no error" } catch let error as DecodingError {
            switch error {
            case .dataCorrupted(let c), .keyNotFound(_, let c), .typeMismatch(_, let c), .valueNotFound(_, let c):
                return c.debugDescription
            @unknown default: return "\(error)"
            }
        } catch { return "unexpected \(type(of: error)): \(error)" }
    }

    @Test func wrongTypeNamesTheExpectedField() throws {
        let encoded = try BinaryEncoder().encode(Other(volume: 3))
        let text = message { _ = try BinaryDecoder().decode(Exposure.self, from: encoded) }
        #expect(text.contains("ms"), "\(text)")
    }

    @Test func trailingBytesAreRefused() throws {
        var encoded = try BinaryEncoder().encode(Exposure(ms: 1, label: "a"))
        encoded.writeInteger(UInt8(0))
        let text = message { _ = try BinaryDecoder().decode(Exposure.self, from: encoded) }
        #expect(text.contains("unexpected"), "\(text)")
    }

    @Test func truncatedInputIsRefused() throws {
        let encoded = try BinaryEncoder().encode(Exposure(ms: 1, label: "hello"))
        for cut in 0..<encoded.readableBytes {
            let prefix = encoded.getSlice(at: encoded.readerIndex, length: cut)!
            #expect(throws: DecodingError.self) { try BinaryDecoder().decode(Exposure.self, from: prefix) }
        }
    }

    @Test func stringLengthLimitIsEnforcedBeforeReading() throws {
        let encoded = try BinaryEncoder().encode(String(repeating: "x", count: 100))
        let limits = WireLimits.defaults { $0.maxStringLength = 10 }
        let text = message { _ = try BinaryDecoder(limits: limits).decode(String.self, from: encoded) }
        #expect(text.contains("limit"), "\(text)")
    }

    @Test func collectionCountLimitIsEnforced() throws {
        let encoded = try BinaryEncoder().encode(Array(0..<100))
        let limits = WireLimits.defaults { $0.maxCollectionCount = 10 }
        let text = message { _ = try BinaryDecoder(limits: limits).decode([Int].self, from: encoded) }
        #expect(text.contains("limit"), "\(text)")
    }

    @Test func hugeAnnouncedCountDoesNotAllocate() throws {
        // A varint announcing ~2^62 elements followed by nothing: refused from the count.
        var buffer = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F])
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode([UInt8].self, from: buffer) }
        buffer = ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0x7F])
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode([String].self, from: buffer) }
    }

    final class Deep: Codable { var next: Deep?; init(next: Deep?) { self.next = next } }

    @Test func nestingDepthLimitIsEnforced() throws {
        var chain: Deep? = nil
        for _ in 0..<200 { chain = Deep(next: chain) }
        let encoded = try BinaryEncoder().encode(chain!)
        let text = message { _ = try BinaryDecoder().decode(Deep.self, from: encoded) }
        #expect(text.contains("nesting"), "\(text)")
        let limits = WireLimits.defaults { $0.maxNestingDepth = 500 }
        _ = try BinaryDecoder(limits: limits).decode(Deep.self, from: encoded)
    }

    @Test func invalidUTF8IsRefused() throws {
        let buffer = ByteBuffer(bytes: [2, 0xC3, 0x28])
        #expect(throws: DecodingError.self) { try BinaryDecoder().decode(String.self, from: buffer) }
    }
}
