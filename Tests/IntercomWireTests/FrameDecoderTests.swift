import IntercomWire
import NIOCore
import Testing

@Suite struct FrameDecoderTests {
    static func sampleFrames() -> [Frame] {
        let kinds: [FrameKind] = [.call, .reply, .message, .error, .cancel, .ping]
        var frames: [Frame] = []
        for i in 0..<50 {
            let bytes: [UInt8] = (0..<(i * 37 % 500)).map { UInt8(truncatingIfNeeded: $0 &* i) }
            let flags: FrameFlags = i % 4 == 0 ? [.rawPayload] : []
            let method: String? = i % 3 == 0 ? nil : "camera.exposure.set.\(i)"
            let timeout: Duration? = i % 2 == 0 ? .milliseconds(i * 7) : nil
            frames.append(
                Frame(
                    kind: kinds[i % 6], flags: flags, id: UInt64(i) &* 0x0123_4567_89AB, method: method, timeout: timeout,
                    payload: ByteBuffer(bytes: bytes)))
        }
        return frames
    }

    static func encode(_ frames: [Frame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { FrameHeader.write(frame, into: &buffer) }
        return buffer
    }

    static func same(_ a: Frame, _ b: Frame) -> Bool {
        a.kind == b.kind && a.flags == b.flags && a.id == b.id && a.method == b.method && a.timeout == b.timeout
            && a.payload == b.payload
    }

    @Test func manyFramesInOneRead() throws {
        let frames = Self.sampleFrames()
        var stream = Self.encode(frames)
        var decoded: [Frame] = []
        while let frame = try FrameDecoder().next(from: &stream) { decoded.append(frame) }
        #expect(decoded.count == frames.count)
        #expect(zip(decoded, frames).allSatisfy(Self.same))
        #expect(stream.readableBytes == 0)
    }

    @Test func framesFedOneByteAtATime() throws {
        let frames = Self.sampleFrames()
        let stream = Self.encode(frames)
        var accumulated = ByteBuffer()
        var decoded: [Frame] = []
        for byte in stream.readableBytesView {
            accumulated.writeInteger(byte)
            while let frame = try FrameDecoder().next(from: &accumulated) { decoded.append(frame) }
        }
        #expect(decoded.count == frames.count)
        #expect(zip(decoded, frames).allSatisfy(Self.same))
    }

    @Test func framesSplitAtRandomPoints() throws {
        let frames = Self.sampleFrames()
        let stream = Self.encode(frames)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var accumulated = ByteBuffer()
            var decoded = 0
            var offset = 0
            while offset < stream.readableBytes {
                let n = min(Int.random(in: 1...700, using: &rng), stream.readableBytes - offset)
                var chunk = stream.getSlice(at: offset, length: n)!
                accumulated.writeBuffer(&chunk)
                offset += n
                while try FrameDecoder().next(from: &accumulated) != nil { decoded += 1 }
            }
            #expect(decoded == frames.count)
        }
    }

    func header(magic: (UInt8, UInt8) = FrameHeader.magic, version: UInt8 = 1, kind: UInt8 = 3, ext: UInt16 = 0, length: UInt32)
        -> ByteBuffer
    {
        var b = ByteBuffer()
        b.writeInteger(magic.0); b.writeInteger(magic.1); b.writeInteger(version); b.writeInteger(kind)
        b.writeInteger(UInt16(0), endianness: .little); b.writeInteger(ext, endianness: .little)
        b.writeInteger(UInt64(1), endianness: .little); b.writeInteger(length, endianness: .little)
        return b
    }

    func error(_ bytes: ByteBuffer, limits: WireLimits = .defaults) -> ProtocolError? {
        var b = bytes
        do { _ = try FrameDecoder(limits: limits).next(from: &b); return nil } catch { return error }
    }

    @Test func fourGiBLengthHeaderIsRefusedFromTheHeaderAlone() {
        // Only the 20 header bytes exist: the decoder must refuse without waiting for
        // (or reserving) the announced 4 GiB body.
        let refused = error(header(length: .max))
        #expect(refused?.code == .frameTooLarge)
        #expect(refused?.message.contains("4294967295") == true)
    }

    @Test func frameOverConfiguredLimitIsRefused() {
        let limits = WireLimits.defaults { $0.maxFrameSize = 1024 }
        #expect(error(header(length: 1025), limits: limits)?.code == .frameTooLarge)
        #expect(error(header(length: 1024), limits: limits) == nil)
    }

    @Test func wrongMagicIsRefusedFromTheFirstByte() {
        #expect(error(ByteBuffer(bytes: [0x47]))?.code == .badMagic)
        #expect(error(ByteBuffer(string: "GET / HTTP/1.1\r\n"))?.message.contains("not speaking Intercom") == true)
    }

    @Test func unsupportedVersionAndUnknownKindAreNamed() {
        let version = error(header(version: 9, length: 0))
        #expect(version?.code == .unsupportedVersion)
        #expect(version?.message.contains("9") == true)
        #expect(error(header(kind: 200, length: 0))?.code == .unknownFrameKind)
    }

    @Test func oversizedOrTruncatedExtensionIsRefused() {
        #expect(error(header(ext: 5000, length: 0))?.code == .extensionTooLarge)
        var b = header(ext: 2, length: 0)
        b.writeBytes([1, 9])  // a method field whose length runs past the extension
        #expect(error(b)?.code == .malformedExtension)
    }

    @Test func helloNegotiatesVersionAndCodec() throws {
        let a = Hello(maxFrameSize: 1 << 20, pid: 10, name: "a")
        let b = Hello(preferredCodec: .json, maxFrameSize: 1 << 20, pid: 11, name: "b")
        var buffer = ByteBuffer()
        b.write(into: &buffer)
        let parsed = try Hello(from: buffer)
        #expect(parsed == b)
        let agreement = try a.negotiate(with: parsed)
        #expect(agreement.version == 1 && agreement.codec == .binary)
        let future = Hello(minVersion: 2, maxVersion: 3, maxFrameSize: 1, pid: 1, name: "new")
        #expect(throws: ProtocolError.self) { try a.negotiate(with: future) }
        let jsonOnly = Hello(preferredCodec: .json, supportedCodecs: [.json], maxFrameSize: 1, pid: 1, name: "j")
        #expect(try a.negotiate(with: jsonOnly).codec == .json)
    }

    @Test func errorBodyRoundTrips() throws {
        var buffer = ByteBuffer()
        ErrorBody(code: "remote", typeName: "MyError", message: "bad thing", details: ByteBuffer(bytes: [1, 2])).write(into: &buffer)
        let body = try ErrorBody(from: buffer)
        #expect(body.code == "remote" && body.typeName == "MyError" && body.message == "bad thing")
        #expect(body.details == ByteBuffer(bytes: [1, 2]))
    }
}
