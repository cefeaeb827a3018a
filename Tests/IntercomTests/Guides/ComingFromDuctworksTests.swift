import Foundation
import Intercom
import IntercomTestSupport
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The snippets of docs/coming-from/ductworks.md, run. (GuideSnippetTests
/// checks that every Swift block of the guide appears in this file.)
@Suite(.serialized) struct ComingFromDuctworksTests {
    @Test func anAnonymousPair() async throws {
        try await withResourceCheck {
            // guide: anonymous pair
            let (parent, child) = try await Peer.pair()
            try await parent.send("hello!")
            #expect(try await child.waitForMessage(timeout: .seconds(1)))  // poll(1), nothing taken
            let received = try await child.receive(as: String.self)
            #expect(received == "hello!")
            try await child.send(received)
            #expect(try await parent.receive(as: String.self, timeout: .seconds(1)) == "hello!")
            await child.close()
            await parent.close()
            // end guide
        }
    }

    @Test func aTCPPair() async throws {
        try await withResourceCheck {
            // guide: tcp pair
            var configuration = Peer.Configuration()
            configuration.allowsPlainTCP = true  // plain TCP authenticates nobody: say so
            var anyone = AccessPolicy()
            anyone.allowsUnauthenticated = true
            let listener = try await PeerListener.listen(
                on: try Endpoint(parsing: "tcp://127.0.0.1:0"), configuration: configuration, access: anyone)
            let address = listener.endpoint  // the port the system picked
            let child = try await Peer.connect(to: address, configuration: configuration)
            var accepted = listener.peers.makeAsyncIterator()
            let parent = try #require(await accepted.next())
            try await parent.send("test")
            #expect(try await child.receive(as: String.self, timeout: .seconds(1)) == "test")
            await child.close()
            await listener.close()
            // end guide
        }
    }

    @Test func aSerializerOfYourOwn() async throws {
        try await withResourceCheck {
            // guide: serializer
            var configuration = Peer.Configuration()
            configuration.customCodecs = [PropertyListCodec()]
            let (parent, child) = try await Peer.pair(configuration: configuration)
            #expect(parent.codec.name == "plist")
            try await parent.send(["exposure": 12, "gain": 2])
            #expect(try await child.receive(as: [String: Int].self) == ["exposure": 12, "gain": 2])
            // end guide
            await child.close()
            await parent.close()
        }
    }

    @Test func readinessForSelectAndPoll() async throws {
        try await withResourceCheck {
            let (parent, child) = try await Peer.pair()
            // guide: readiness
            let fd = try child.messageReadinessDescriptor()  // readable while a message waits
            try await parent.send("wake up")
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            #expect(poll(&entry, 1, 5_000) == 1)  // select/poll/epoll see it, with your other descriptors
            #expect(child.hasWaitingMessage)
            #expect(try await child.receive(as: String.self) == "wake up")
            // end guide
            await child.close()
            await parent.close()
        }
    }
}

// guide: codec
/// A payload codec of your own: Foundation's property lists.
struct PropertyListCodec: CustomPayloadCodec {
    let name = "plist"

    func encode<T: Encodable>(_ value: T, into buffer: inout ByteBuffer) throws {
        buffer.writeBytes(try PropertyListEncoder().encode(value))
    }

    func decode<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer, limits: WireLimits) throws -> T {
        try PropertyListDecoder().decode(T.self, from: Data(buffer.readableBytesView))
    }
}
// end guide
