import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import IntercomWire
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A deliberately misbehaving client: a plain blocking socket writing raw bytes.
struct RawClient {
    let fd: Int32

    init(unixPath path: String) throws {
        self.fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { throw IntercomError(.connectionFailed, "raw connect failed: \(errno)") }
    }

    init(fileDescriptor: Int32) {
        self.fd = fileDescriptor
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func write(_ buffer: ByteBuffer) {
        let bytes = Array(buffer.readableBytesView)
        _ = bytes.withUnsafeBytes { Glibc.write(self.fd, $0.baseAddress, $0.count) }
    }

    /// Reads until the other side closes (or 10 s pass); returns the frames it sent
    /// and whether it closed (end of stream, or a reset).
    func readUntilClosed() -> (frames: [Frame], closed: Bool) {
        var buffer = ByteBuffer()
        var chunk = [UInt8](repeating: 0, count: 65536)
        var closed = false
        while true {
            let n = chunk.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
            if n == 0 { closed = true; break }
            // A Unix socket closed with bytes of ours still unread reports ECONNRESET
            // (after what it had sent): closed as well.
            if n < 0 { closed = errno == ECONNRESET; break }
            buffer.writeBytes(chunk[0..<n])
        }
        var frames: [Frame] = []
        while let frame = try? FrameDecoder().next(from: &buffer) { frames.append(frame) }
        return (frames, closed)
    }

    /// Reads until `count` frames have arrived (or the other side closes, or 10 s
    /// pass without a byte); returns the frames read.
    func readFrames(_ count: Int) -> [Frame] {
        var buffer = ByteBuffer()
        var chunk = [UInt8](repeating: 0, count: 65536)
        var frames: [Frame] = []
        while frames.count < count {
            if let frame = try? FrameDecoder().next(from: &buffer) {
                frames.append(frame)
                continue
            }
            let n = chunk.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            buffer.writeBytes(chunk[0..<n])
        }
        return frames
    }

    func close() { _ = Glibc.close(self.fd) }

    /// A hello followed by `frames`, to write in one go.
    static func afterHello(_ frames: ByteBuffer...) -> ByteBuffer {
        var bytes = Self.hello()
        for var frame in frames { bytes.writeBuffer(&frame) }
        return bytes
    }

    static func hello(maxFrameSize: UInt32 = 1 << 20) -> ByteBuffer {
        var buffer = ByteBuffer()
        let mark = FrameHeader.begin(into: &buffer, kind: .hello, id: 0)
        Hello(maxFrameSize: maxFrameSize, pid: UInt32(getpid()), name: "raw").write(into: &buffer)
        FrameHeader.finish(mark, in: &buffer)
        return buffer
    }

    /// A bare header: magic, version, kind, no flags, no extension, id 1, the given length.
    static func header(version: UInt8 = 1, kind: UInt8 = 3, length: UInt32) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeBytes([0x49, 0x43, version, kind, 0, 0, 0, 0])
        b.writeInteger(UInt64(1), endianness: .little)
        b.writeInteger(length, endianness: .little)
        return b
    }
}

@Suite(.serialized) struct BadInputTests {
    /// Each bad client is told what was wrong and disconnected; a well-behaved child
    /// on the same listener keeps calling without a single error.
    @Test func malformedClientsAreDisconnectedWhileAGoodClientCarriesOn() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.unix)
            let listener = try #require(child.listener)
            let good = Task {
                for i in 0..<200 {
                    let sum = try await child.peer.call("math.add", AddRequest(a: i, b: i), returning: Int.self)
                    #expect(sum == 2 * i)
                }
            }
            // What was sent, the code the error frame (id 0) must carry, and words its message must contain.
            let cases: [(String, ByteBuffer, String, String)] = [
                ("wrong magic", ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "badMagic", "not speaking Intercom"),
                ("unsupported version", RawClient.header(version: 9, kind: 1, length: 0), "unsupportedVersion", "version 9"),
                ("unknown kind", RawClient.header(kind: 77, length: 0), "unknownFrameKind", "unknown frame kind 77"),
                ("4 GiB length after a good hello", RawClient.afterHello(RawClient.header(length: .max)), "frameTooLarge", "4294967295"),
                ("a call before the hello", RawClient.header(kind: 3, length: 0), "malformedHandshake", "expected a hello"),
                ("a second hello", RawClient.afterHello(RawClient.hello()), "malformedHeader", "unexpected hello"),
            ]
            for (name, bytes, code, expected) in cases {
                let raw = try RawClient(unixPath: listener.path)
                raw.write(bytes)
                let (frames, closed) = raw.readUntilClosed()
                raw.close()
                #expect(closed, "\(name): the server must close the connection")
                let errors = frames.filter { $0.kind == .error && $0.id == 0 }.compactMap { try? ErrorBody(from: $0.payload) }
                #expect(errors.contains { $0.code == code && $0.message.contains(expected) }, "\(name): got \(errors)")
            }
            try await good.value
            #expect(try await child.peer.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self) == 3)
            await child.shutdown()
        }
    }

    /// Over a socket pair: garbage after the handshake fails the pending call with a
    /// protocol error instead of hanging, and the process's other connection is fine.
    @Test func garbageOnASocketPairFailsPendingCallsAndClosesOnlyThatConnection() async throws {
        try await withResourceCheck {
            let other = try await ChildProcess.spawn(.socketpair)
            let sockets = try SocketPair()
            let raw = RawClient(fileDescriptor: sockets.second)
            raw.write(RawClient.hello())
            let peer = try await Peer.adopt(fileDescriptor: sockets.first, configuration: ChildProcess.configuration())
            let pending = Task { try await peer.call("anything", 1, returning: Int.self, timeout: .seconds(30)) }
            // The call frame reaching the other end means the call is registered (it is sent after).
            #expect(raw.readFrames(2).map(\.kind) == [.hello, .call])
            raw.write(ByteBuffer(string: "garbage!"))
            let result = await pending.result
            #expect(throws: IntercomError.self) { try result.get() }
            if case .failure(let error as IntercomError) = result { #expect(error.code == .protocolViolation, "\(error)") }
            await peer.waitUntilClosed()
            raw.close()
            #expect(try await other.peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            await other.shutdown()
        }
    }

    /// Call ids name calls in flight: 0 (which an error frame uses for the whole
    /// connection) and the id of a call still running are refused, and the
    /// connection is closed with an error frame saying why.
    @Test func aCallIdMustBeNonZeroAndNotInFlight() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "ids", bus: temporary)
                _ = try await temporary.bus.waitForService("ids", timeout: .seconds(20))
                let hang = ByteBuffer(bytes: try RawClient.call(id: 5, "hang", 0))
                let cases: [(String, ByteBuffer, String)] = [
                    ("a call with id 0", ByteBuffer(bytes: try RawClient.call(id: 0, "math.add", AddRequest(a: 1, b: 2))), "id 0"),
                    ("a call reusing a running call's id", { var twice = hang; var again = hang; twice.writeBuffer(&again); return twice }(),
                     "call id 5 is already used"),
                ]
                for (name, frames, expected) in cases {
                    let raw = try RawClient(unixPath: temporary.directory + "/ids.sock")
                    raw.write(RawClient.afterHello(frames))
                    let (received, closed) = raw.readUntilClosed()
                    raw.close()
                    #expect(closed, "\(name): the service must close the connection")
                    let errors = received.filter { $0.kind == .error && $0.id == 0 }.compactMap { try? ErrorBody(from: $0.payload) }
                    #expect(errors.contains { $0.code == "malformedHeader" && $0.message.contains(expected) }, "\(name): got \(errors)")
                }
                // Distinct ids in flight at once are fine.
                let raw = try RawClient(unixPath: temporary.directory + "/ids.sock")
                var two = ByteBuffer(bytes: try RawClient.call(id: 1, "math.add", AddRequest(a: 1, b: 2)))
                var second = ByteBuffer(bytes: try RawClient.call(id: 2, "math.add", AddRequest(a: 3, b: 4)))
                two.writeBuffer(&second)
                raw.write(RawClient.afterHello(two))
                let replies = raw.readFrames(3).filter { $0.kind == .reply }
                raw.close()
                #expect(Set(replies.map(\.id)) == [1, 2])
                let peer = try await temporary.bus.connect(to: "ids")
                #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
                await peer.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// A stream cut anywhere — inside a header, an extension or a payload, one
    /// byte at a time or many frames at once — yields the same frames: the
    /// reader completes a cut frame with just the bytes it lacks and decodes
    /// the rest of each read where it lies.
    @Test func framesCutAtAnyPointArriveWhole() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "cuts", bus: temporary)
                _ = try await temporary.bus.waitForService("cuts", timeout: .seconds(20))
                var stream = RawClient.hello()
                var expected: [UInt64: [UInt8]] = [:]
                for id in UInt64(1)...120 {
                    // Small frames mostly, some of 70 KiB (longer than one read of the socket).
                    let size = id % 17 == 0 ? 70_000 + Int(id) : Int(id * 7 % 300)
                    let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(id)) }
                    expected[id] = bytes
                    var frame = ByteBuffer(bytes: try RawClient.call(id: id, "echo.bytes", bytes))
                    stream.writeBuffer(&frame)
                }
                let raw = try RawClient(unixPath: temporary.directory + "/cuts.sock")
                // Pieces of 1 to 1,024 bytes (a fixed pseudo-random sequence), each its own write.
                var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
                while stream.readableBytes > 0 {
                    seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    let length = min(stream.readableBytes, seed >> 61 == 0 ? 1 : Int(seed >> 54) + 1)
                    raw.write(stream.readSlice(length: length)!)
                }
                let replies = raw.readFrames(expected.count + 1).filter { $0.kind != .hello }  // the service's hello first
                raw.close()
                #expect(replies.count == expected.count, "got \(replies.count) replies")
                for reply in replies {
                    let error = (try? ErrorBody(from: reply.payload)).map { "\($0.code): \($0.message)" } ?? ""
                    #expect(reply.kind == .reply, "call \(reply.id): \(reply.kind) \(error)")
                    guard reply.kind == .reply else { continue }
                    let echoed = try BinaryDecoder().decode([UInt8].self, from: reply.payload)
                    #expect(echoed == expected[reply.id], "call \(reply.id) came back changed")
                }
                let peer = try await temporary.bus.connect(to: "cuts")
                #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
                await peer.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// A call sent as JSON on a binary connection is answered in JSON, its
    /// typed error too: the details are JSON and the frame says so.
    @Test func aJSONCallGetsItsTypedErrorInJSON() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "typed", bus: temporary)
                _ = try await temporary.bus.waitForService("typed", timeout: .seconds(20))
                let raw = try RawClient(unixPath: temporary.directory + "/typed.sock")
                var call = ByteBuffer()
                let mark = FrameHeader.begin(into: &call, kind: .call, flags: .jsonPayload, id: 9, method: "fail.typed")
                call.writeString("\"too dark\"")
                FrameHeader.finish(mark, in: &call)
                raw.write(RawClient.afterHello(call))
                let frames = raw.readFrames(2)
                raw.close()
                let error = try #require(frames.first { $0.kind == .error && $0.id == 9 }, "got \(frames.map(\.kind))")
                #expect(error.flags.contains(.jsonPayload) && error.flags.contains(.typedError))
                let body = try ErrorBody(from: error.payload)
                #expect(body.code == "remote", "\(body)")
                #expect(try PayloadCodec.json().decode(HelperError.self, from: body.details) == .refused(reason: "too dark", code: 42))
                // A Swift caller decodes the typed error from JSON as well.
                let peer = try await temporary.bus.connect(to: "typed", configuration: ChildProcess.configuration())
                let thrown = await #expect(throws: HelperError.self) {
                    _ = try await peer.callJSON("fail.typed", json: "\"too dark\"")
                }
                #expect(thrown == .refused(reason: "too dark", code: 42))
                #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
                await peer.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    @Test func oversizedOutgoingPayloadIsRefusedBeforeSending() async throws {
        try await withResourceCheck {
            let configuration = Peer.Configuration.defaults { $0.limits.maxFrameSize = 1024 }
            let router = Router()
            try router.register("echo") { (bytes: [UInt8], _) in bytes }
            let (a, b) = try await Peer.pair(routers: (nil, router), configuration: configuration)
            let error = await expectIntercomError(.frameTooLarge) {
                _ = try await a.call("echo", [UInt8](repeating: 1, count: 4096), returning: [UInt8].self)
            }
            #expect(error?.message.contains("1024") == true)
            #expect(try await a.call("echo", [UInt8](repeating: 1, count: 10), returning: [UInt8].self).count == 10)
            await a.close()
            await b.close()
        }
    }
}

@Suite struct RouterTests {
    @Test func registeringANameTwiceIsAnError() throws {
        let router = Router()
        try router.register("camera.exposure.set") { (_: Int, _) in 1 }
        #expect(throws: IntercomError.self) { try router.register("camera.exposure.set") { (_: Int, _) in 2 } }
        do {
            try router.register("camera.exposure.set") { (_: String, _) in "x" }
        } catch {
            #expect(error.code == .conflict)
            #expect(error.message.contains("camera.exposure.set"))
        }
        try router.setFallback { _ in nil }
        #expect(throws: IntercomError.self) { try router.setFallback { _ in nil } }
        #expect(router.methods == ["camera.exposure.set"])
        #expect(router.unregister("camera.exposure.set"))
        try router.register("camera.exposure.set") { (_: Int, _) in 3 }
    }

    @Test(arguments: ["", "camera..set", ".camera", "camera.", "has space", String(repeating: "a", count: 300)])
    func badNamesAreRefused(name: String) {
        do {
            try Router().register(name) { (_: Int, _) in 1 }
            Issue.record("'\(name)' was accepted")
        } catch {
            #expect(error.code == .invalidName)
        }
    }

    @Test func oneWayMessagesRunTheirHandlerOrLandInTheInbox() async throws {
      try await withResourceCheck {
        let router = Router()
        let (seen, see) = AsyncStream.makeStream(of: String.self)
        try router.register("log.line") { (line: String, _) in see.yield(line) }
        let (a, b) = try await Peer.pair(routers: (nil, router))
        try await b.send("reply.here", "unrouted")
        try await a.send("log.line", "first")
        try await a.send(Note(index: 1, text: "to the inbox"))
        #expect(try await b.receive(as: Note.self, timeout: .seconds(5)) == Note(index: 1, text: "to the inbox"))
        #expect(try await a.receiveMessage(timeout: .seconds(5)).method == "reply.here")
        var lines = seen.makeAsyncIterator()
        #expect(await lines.next() == "first")
        // A burst drains in batches, in order, nothing lost.
        for i in 0..<500 { try await a.send(Note(index: i, text: "")) }
        var drained: [Int] = []
        while drained.count < 500 {
            let batch = try await b.receiveMessages(limit: 128, timeout: .seconds(5))
            #expect(!batch.isEmpty && batch.count <= 128)
            drained += try batch.map { try $0.decode(as: Note.self).index }
        }
        #expect(drained == Array(0..<500))
        await a.close()
        await expectIntercomError(.closed) { _ = try await a.receive(as: Note.self) }
        await expectIntercomError(.peerLost) { _ = try await b.receive(as: Note.self) }
        await b.close()
      }
    }
}
