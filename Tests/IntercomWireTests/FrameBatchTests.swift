import IntercomWire
import NIOCore
import Testing

/// `FrameBatch` writes, in chunks, exactly the bytes the one-frame-at-a-time
/// path writes, so a receiver cannot tell how the frames were sent.
@Suite struct FrameBatchTests {
    /// Payloads of every small size (0 among them), one long one, with and without a method.
    static let payloads: [[UInt8]] = (0..<200).map { size in (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) } }
        + [[UInt8](repeating: 0xAB, count: 100_000)]

    static func oneByOne(_ payloads: [[UInt8]], method: String?, codec: PayloadCodec) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        for payload in payloads {
            let mark = FrameHeader.begin(into: &buffer, kind: .message, id: 0, method: method)
            try codec.encode(payload, into: &buffer)
            FrameHeader.finish(mark, in: &buffer)
        }
        return buffer
    }

    @Test(arguments: [nil, "camera.frames"] as [String?], [64, 1000, 64 << 10])
    func chunksHoldTheSameBytesAsFramesWrittenOneByOne(method: String?, maxBytes: Int) throws {
        let codec = PayloadCodec.binary()
        var batch = FrameBatch(kind: .message, method: method)
        for payload in Self.payloads {
            let length = try batch.append(payload, codec: codec)
            #expect(length == payload.count + (payload.count < 128 ? 1 : payload.count < 16_384 ? 2 : 3))
        }
        #expect(batch.count == Self.payloads.count)
        var written = ByteBuffer()
        var chunks = 0
        while !batch.isFullyWritten {
            var chunk = ByteBuffer()
            let frames = batch.writeFrames(into: &chunk, maxBytes: maxBytes)
            #expect(frames >= 1)
            // A chunk exceeds the bound only when it is one frame larger than the bound.
            #expect(chunk.readableBytes <= maxBytes || frames == 1)
            written.writeBuffer(&chunk)
            chunks += 1
        }
        #expect(written == (try Self.oneByOne(Self.payloads, method: method, codec: codec)))
        #expect(chunks > 1)
        var other = ByteBuffer()
        #expect(batch.writeFrames(into: &other, maxBytes: maxBytes) == 0, "a written batch writes nothing more")

        // And they decode as the messages sent, each its own frame.
        let decoder = FrameDecoder(limits: WireLimits(maxFrameSize: 1 << 20))
        for payload in Self.payloads {
            let frame = try #require(try decoder.next(from: &written))
            #expect(frame.kind == .message && frame.method == method)
            #expect(try codec.decode([UInt8].self, from: frame.payload) == payload)
        }
        #expect(written.readableBytes == 0)
    }

    @Test func aValueThatFailsToEncodeLeavesTheBatchAsItWas() throws {
        struct Refuses: Encodable {
            func encode(to encoder: any Encoder) throws {
                var container = encoder.singleValueContainer()
                try container.encode(1)
                throw EncodingError.invalidValue(0, .init(codingPath: [], debugDescription: "no"))
            }
        }
        let codec = PayloadCodec.binary()
        var batch = FrameBatch(kind: .message, method: nil)
        _ = try batch.append([UInt8]([1, 2, 3]), codec: codec)
        #expect(throws: EncodingError.self) { try batch.append(Refuses(), codec: codec) }
        _ = try batch.append([UInt8]([4]), codec: codec)
        var chunk = ByteBuffer()
        #expect(batch.writeFrames(into: &chunk, maxBytes: 1 << 16) == 2)
        #expect(chunk == (try Self.oneByOne([[1, 2, 3], [4]], method: nil, codec: codec)))
    }
}

/// The fused writer of byte-array frames (stream items of raw chunks) writes
/// exactly what the general path writes, and the byte-array fast path of the
/// decoder takes exactly what the general path takes.
@Suite struct ByteArrayFastPathTests {
    @Test func aByteArrayFrameIsWhatTheGeneralPathWrites() throws {
        let codec = PayloadCodec.binary()
        for (index, payload) in FrameBatchTests.payloads.enumerated() {
            let id = UInt64(index) &* 0x0101_0101_0101
            let flags: FrameFlags = index.isMultiple(of: 2) ? [] : .inputStream
            var general = ByteBuffer(bytes: [0xEE])  // frames appended after what is there
            let mark = FrameHeader.begin(into: &general, kind: .streamItem, flags: flags, id: id)
            try codec.encode(payload, into: &general)
            let expectedLength = FrameHeader.finish(mark, in: &general)
            var fused = ByteBuffer(bytes: [0xEE])
            let length = payload.withUnsafeBytes {
                FrameHeader.appendByteArrayFrame(into: &fused, kind: .streamItem, flags: flags, id: id, bytes: $0)
            }
            #expect(length == expectedLength)
            #expect(fused == general, "payload of \(payload.count) bytes")
            // And it reads back as the same frame and the same bytes.
            fused.moveReaderIndex(forwardBy: 1)
            let frame = try #require(try FrameDecoder().next(from: &fused))
            #expect(frame.kind == .streamItem && frame.flags == flags && frame.id == id)
            #expect(try codec.decode([UInt8].self, from: frame.payload) == payload)
        }
    }

    @Test func theDecodersByteArrayPathTakesWhatTheGeneralPathTakes() throws {
        let decoder = BinaryDecoder()
        // A length written in more bytes than needed: both paths accept it.
        #expect(try decoder.decode([UInt8].self, from: ByteBuffer(bytes: [0x83, 0x00, 1, 2, 3])) == [1, 2, 3])
        #expect(try decoder.decode([UInt8].self, from: ByteBuffer(bytes: [0x80, 0x80, 0x00])) == [])
        // Refused: a length past 64 bits, too few bytes, bytes left over, a length cut short.
        let refused: [[UInt8]] = [
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02],
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            [0x03, 1, 2], [0x01, 1, 2], [0x80], [],
        ]
        for bytes in refused {
            #expect(throws: DecodingError.self, "\(bytes)") { try decoder.decode([UInt8].self, from: ByteBuffer(bytes: bytes)) }
        }
        // Over the collection limit: refused although the bytes are all there.
        let limited = BinaryDecoder(limits: WireLimits(maxCollectionCount: 4))
        #expect(throws: DecodingError.self) { try limited.decode([UInt8].self, from: ByteBuffer(bytes: [0x05, 1, 2, 3, 4, 5])) }
        #expect(try limited.decode([UInt8].self, from: ByteBuffer(bytes: [0x04, 1, 2, 3, 4])) == [1, 2, 3, 4])
    }
}
