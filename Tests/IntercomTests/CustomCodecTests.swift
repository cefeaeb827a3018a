import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import NIOCore
import Synchronization
import Testing

/// ductworks' custom serializers: a codec written by the user (here, the test
/// helper's `MarkedJSONCodec`), named in the hello, used when both sides list
/// it — for calls, replies, errors and streams — and the built-in codecs when
/// they do not. Real child processes.
@Suite(.serialized) struct CustomCodecTests {
    private static var withCodec: Peer.Configuration {
        var configuration = ChildProcess.configuration()
        configuration.customCodecs = [MarkedJSONCodec()]
        return configuration
    }

    @Test(arguments: [TransportKind.socketpair, .unix, .sharedMemory, .tcp])
    func bothSidesListingACodecUseIt(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind, arguments: ["--custom-codec"], configuration: Self.withCodec)
            let peer = child.peer
            #expect(peer.codec.name == "marked-json")
            #expect(peer.codec.id == .custom)
            let encodedBefore = MarkedJSONCodec.encoded.load(ordering: .relaxed)
            let decodedBefore = MarkedJSONCodec.decoded.load(ordering: .relaxed)

            #expect(try await peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            var items: [Int] = []
            for try await item in peer.stream("count", 3, of: Int.self) { items.append(item) }
            #expect(items == [0, 1, 2])
            // A tool's JSON call still works beside it.
            #expect(try await peer.callJSON("math.add", json: #"{"a":1,"b":1}"#) == "2")
            // The codec really carried them: this side encoded two requests and decoded the reply and three items.
            #expect(MarkedJSONCodec.encoded.load(ordering: .relaxed) - encodedBefore >= 2)
            #expect(MarkedJSONCodec.decoded.load(ordering: .relaxed) - decodedBefore >= 4)
            await child.shutdown()
        }
    }

    @Test func withoutACommonCodecTheBuiltInOnesAreUsed() async throws {
        try await withResourceCheck {
            // This side lists it, the child does not.
            let child = try await ChildProcess.spawn(.socketpair, configuration: Self.withCodec)
            #expect(child.peer.codec.name == "binary")
            #expect(try await child.peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            await child.shutdown()
        }
    }

    /// A payload the codec cannot read is the caller's `invalidPayload`; the
    /// connection stays up. (This side's codec has the right name but leaves
    /// out the mark the child's insists on.)
    @Test func aPayloadTheCodecRefusesFailsThatCallOnly() async throws {
        try await withResourceCheck {
            var configuration = ChildProcess.configuration()
            configuration.customCodecs = [UnmarkedJSONCodec()]
            let child = try await ChildProcess.spawn(.socketpair, arguments: ["--custom-codec"], configuration: configuration)
            #expect(child.peer.codec.name == "marked-json")
            let error = await #expect(throws: IntercomError.self) {
                _ = try await child.peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self)
            }
            #expect(error?.code == .invalidPayload)
            #expect(error?.message.contains("no MJ1: mark") == true, "\(String(describing: error))")
            #expect(try await child.peer.callJSON("math.add", json: #"{"a":4,"b":4}"#) == "8")
            await child.shutdown()
        }
    }
}

/// The same name as the helper's codec, without its mark: a stranger's codec.
private struct UnmarkedJSONCodec: CustomPayloadCodec {
    let name = "marked-json"

    func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
        buffer.writeBytes(try JSONEncoder().encode(value))
    }

    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, limits: WireLimits) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
    }
}
