package import NIOCore

/// Many frames that differ only in their payloads — a stream of one-way
/// messages to one method — encoded payload after payload into one buffer,
/// then framed in one pass: one header template for all of them, and one
/// access to the output buffer per chunk instead of three per frame.
///
/// Each `ByteBuffer` operation costs an exclusivity check and a uniqueness
/// check; for a 64-byte message those dominated the sender's time.
package struct FrameBatch {
    /// The header and extension every frame starts with; bytes 16–19 (the
    /// payload length) are patched per frame.
    private let header: [UInt8]
    /// The encoded payloads, back to back.
    private var payloads = ByteBuffer()
    /// Each payload's length, in order.
    private var lengths: [UInt32] = []
    /// The frame after the last one written by ``writeFrames(into:maxBytes:)``.
    private var nextFrame = 0
    /// Where that frame's payload starts in `payloads`.
    private var nextPayload = 0

    /// A batch of frames of `kind` with `flags` and `method`, each with id 0.
    package init(kind: FrameKind, flags: FrameFlags = [], method: String?) {
        var header = ByteBuffer()
        let mark = FrameHeader.begin(into: &header, kind: kind, flags: flags, id: 0, method: method)
        FrameHeader.finish(mark, in: &header)
        self.header = Array(header.readableBytesView)
        self.payloads.reserveCapacity(4096)
    }

    /// How many frames the batch holds.
    package var count: Int { self.lengths.count }

    /// Whether every frame has been written out.
    package var isFullyWritten: Bool { self.nextFrame == self.lengths.count }

    /// Encodes `value` with `codec` as the next frame's payload.
    ///
    /// - Returns: the payload's length in bytes.
    /// - Throws: what the codec throws; the batch is then unchanged.
    package mutating func append<T: Encodable>(_ value: T, codec: PayloadCodec) throws -> Int {
        let start = self.payloads.writerIndex
        do {
            try codec.encode(value, into: &self.payloads)
        } catch {
            self.payloads.moveWriterIndex(to: start)
            throw error
        }
        let length = self.payloads.writerIndex - start
        self.lengths.append(UInt32(truncatingIfNeeded: length))
        return length
    }

    /// Appends the next frames, whole, to `buffer`: as many as fit in `maxBytes`,
    /// and at least one. One reservation and one access to `buffer`.
    ///
    /// - Returns: how many frames were written (0 once all are).
    @discardableResult
    package mutating func writeFrames(into buffer: inout ByteBuffer, maxBytes: Int) -> Int {
        let headerSize = self.header.count
        var end = self.nextFrame
        var bytes = 0
        while end < self.lengths.count {
            let frameSize = headerSize + Int(self.lengths[end])
            if end > self.nextFrame, bytes + frameSize > maxBytes { break }
            bytes += frameSize
            end += 1
        }
        guard end > self.nextFrame else { return 0 }
        let first = self.nextFrame
        let payloadStart = self.nextPayload
        let written = self.header.withUnsafeBytes { header in
            self.lengths.withUnsafeBufferPointer { lengths in
                self.payloads.withUnsafeReadableBytes { payloads in
                    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: bytes) { out in
                        var offset = 0
                        var payloadOffset = payloadStart
                        for index in first..<end {
                            let length = Int(lengths[index])
                            out.baseAddress!.advanced(by: offset).copyMemory(from: header.baseAddress!, byteCount: headerSize)
                            out.storeBytes(of: UInt32(length).littleEndian, toByteOffset: offset + 16, as: UInt32.self)
                            offset += headerSize
                            if length > 0 {
                                out.baseAddress!.advanced(by: offset).copyMemory(
                                    from: payloads.baseAddress!.advanced(by: payloadOffset), byteCount: length)
                            }
                            offset += length
                            payloadOffset += length
                        }
                        return offset
                    }
                }
            }
        }
        self.nextPayload += written - (end - first) * headerSize
        self.nextFrame = end
        return end - first
    }
}
