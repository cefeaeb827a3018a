import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import IntercomWire
import CompressNIO
import NIOCore
import Testing

/// epyrpc's compression: each side compresses what it sends above its
/// threshold, when the result is smaller; every side reads compressed frames;
/// a decompressed payload is bounded by the receiver's maximum frame size.
@Suite(.serialized) struct CompressionTests {
    private static let compressible = (0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 % 61) }
    private static func incompressible() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<(256 << 10)).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    private static var compressing: Peer.Configuration {
        var configuration = ChildProcess.configuration()
        configuration.compression = .deflate(threshold: 1024)
        return configuration
    }

    @Test(arguments: [TransportKind.socketpair, .tcp])
    func compressiblePayloadsCrossCompressedBothWays(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind, arguments: ["--compress", "1024"], configuration: Self.compressing)
            let peer = child.peer
            let before = peer.traffic
            #expect(try await peer.call("echo.bytes", Self.compressible, returning: [UInt8].self) == Self.compressible)
            let after = peer.traffic
            #expect(after.bytesSent - before.bytesSent < 16 << 10, "256 KiB of a repeating pattern went out as \(after.bytesSent - before.bytesSent) bytes")
            #expect(after.bytesReceived - before.bytesReceived < 16 << 10, "and came back as \(after.bytesReceived - before.bytesReceived)")

            // Random bytes do not shrink: they go as they are, never larger.
            let noise = Self.incompressible()
            #expect(try await peer.call("echo.bytes", noise, returning: [UInt8].self) == noise)
            let last = peer.traffic
            #expect(last.bytesSent - after.bytesSent >= noise.count)
            #expect(last.bytesSent - after.bytesSent < noise.count + 1024)
            await child.shutdown()
        }
    }

    /// Each side decides for what it sends: the child does not compress, this side does.
    @Test func eachSideDecidesForWhatItSends() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair, configuration: Self.compressing)
            let before = child.peer.traffic
            #expect(try await child.peer.call("echo.bytes", Self.compressible, returning: [UInt8].self) == Self.compressible)
            let after = child.peer.traffic
            #expect(after.bytesSent - before.bytesSent < 16 << 10)
            #expect(after.bytesReceived - before.bytesReceived >= Self.compressible.count, "the child's reply is not compressed")
            await child.shutdown()
        }
    }

    /// A compressed payload that would decompress past the receiver's maximum
    /// frame size (a decompression bomb), or is not deflate at all, closes that
    /// connection with an error frame saying why — without inflating it.
    @Test func aDecompressionBombOrGarbageClosesTheConnection() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("take") { (bytes: [UInt8], _: CallContext) in bytes.count }
            var configuration = ChildProcess.configuration()
            configuration.limits.maxFrameSize = 64 << 10
            var zeros = ByteBuffer(repeating: 0, count: 4 << 20)
            let bomb = try zeros.compress(with: .deflate())
            #expect(bomb.readableBytes < 16 << 10, "4 MiB of zeros is a few KiB compressed")
            for (name, payload, expected) in [
                ("bomb", bomb, "does not decompress within this side's 65536-byte maximum frame size"),
                ("garbage", ByteBuffer(string: "not deflate at all, just text"), "does not decompress"),
            ] {
                let sockets = try SocketPair()
                let raw = RawClient(fileDescriptor: sockets.second)
                raw.write(RawClient.hello())
                let peer = try await Peer.adopt(fileDescriptor: sockets.first, router: router, configuration: configuration)
                var frame = ByteBuffer()
                let mark = FrameHeader.begin(into: &frame, kind: .call, flags: .compressed, id: 1, method: "take")
                frame.writeImmutableBuffer(payload)
                FrameHeader.finish(mark, in: &frame)
                raw.write(frame)
                let (frames, closed) = raw.readUntilClosed()
                raw.close()
                #expect(closed, "\(name): the connection must close")
                let errors = frames.filter { $0.kind == .error && $0.id == 0 }.compactMap { try? ErrorBody(from: $0.payload) }
                #expect(errors.contains { $0.message.contains(expected) }, "\(name): got \(errors)")
                await peer.waitUntilClosed()
            }
        }
    }
}
