#if os(Linux)
internal import DequeModule
internal import Glibc
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization

// The reading side of the transport: whole frames out of the inbound ring (and the
// buffer pool), handed to the receiver on the transport's thread.
extension SharedMemoryTransport {
    /// Reads what the other side published, delivers the whole frames, and tells
    /// the other side when it waits for the room this freed.
    func readInbound() -> Bool {
        let loop = self.loop
        // Checked first, without touching the receiver: this runs on every turn of
        // the spin, and retaining the peer (which has weak references, so its count
        // lives in a side table) cost more than the check.
        guard self.hasInboundBytes else { return false }
        guard let receiver = loop.receiver, loop.pauseReasons.isEmpty || loop.socketEnded else { return false }
        var delivered = false
        do {
            while loop.pauseReasons.isEmpty || loop.socketEnded {
                self.reserveForPendingFrame()
                // A reference read during the upgrade comes before anything still in the ring.
                var reference = loop.pendingReference
                loop.pendingReference = nil
                let copied =
                    reference != nil
                    ? 0
                    : try self.inbound.readAvailable(
                        into: &loop.cumulation, state: &loop.reader, limit: 256 << 10, reference: &reference)
                if copied == 0, reference == nil, !loop.undecoded { break }
                loop.undecoded = false
                delivered = true
                if self.inbound.takeSpaceNoticeRequest() { self.outbound.wakeReader() }
                try self.deliverFrames(to: receiver)
                if let reference { try self.deliverPooledFrames(reference, to: receiver) }
                if loop.cumulation.readableBytes == 0 {
                    // A fresh buffer, not `clear()`: delivered payloads still share the old storage.
                    loop.cumulation = ByteBuffer()
                } else if loop.cumulation.readerIndex > 256 << 10 {
                    loop.cumulation.discardReadBytes()
                }
                receiver.endOfReadBatch()
            }
        } catch {
            self.fail(error)
            return true
        }
        return delivered
    }

    /// Hands every whole frame in the cumulation to `receiver`. The cumulation
    /// is moved into a local for the loop: one exclusive access of the loop
    /// state per read rather than one per frame.
    func deliverFrames(to receiver: any FrameReceiver) throws(ProtocolError) {
        let loop = self.loop
        var cumulation = ByteBuffer()
        swap(&cumulation, &loop.cumulation)
        defer { swap(&cumulation, &loop.cumulation) }
        try self.deliverFrames(in: &cumulation, to: receiver)
    }

    /// Cuts the whole frames at the front of `bytes` and hands them to `receiver`.
    func deliverFrames(in bytes: inout ByteBuffer, to receiver: any FrameReceiver) throws(ProtocolError) {
        let decoder = self.loop.decoder
        while let frame = try decoder.next(from: &bytes) {
            if frame.flags.contains(.descriptors) {
                guard let channel = self.descriptorChannel else {
                    throw ProtocolError(.malformedHeader, "a frame flagged with descriptors on a connection that agreed to pass none")
                }
                var flagged = frame
                flagged.descriptors = try channel.receive()
                receiver.receive(flagged)
                continue
            }
            receiver.receive(consume frame)  // moved, not copied and destroyed: a retain and release less per frame
        }
    }

    /// Hands on the frames in the pool blocks `reference` names, in place: their
    /// payloads are slices of a buffer over the shared blocks. The stream must be
    /// at a frame boundary before them and after them.
    func deliverPooledFrames(_ reference: BufferPoolReference, to receiver: any FrameReceiver) throws(ProtocolError) {
        guard let pool = self.inboundPool else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: a buffer-pool reference, but the other side announced no pool")
        }
        guard self.loop.cumulation.readableBytes == 0 else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: a buffer-pool reference inside a frame")
        }
        var pooled = try pool.buffer(for: reference)
        try self.deliverFrames(in: &pooled, to: receiver)
        guard pooled.readableBytes == 0 else {
            throw ProtocolError(.malformedHeader, "shared-memory buffer pool: \(pooled.readableBytes) bytes of a partial frame")
        }
    }

    /// A frame larger than what arrived so far gets its whole size reserved at
    /// once, so its pieces are copied in once rather than through doubling buffers.
    func reserveForPendingFrame() {
        let cumulation = self.loop.cumulation
        guard cumulation.readableBytes >= FrameHeader.size,
            let extensionLength = cumulation.getInteger(at: cumulation.readerIndex + 6, endianness: .little, as: UInt16.self),
            let payloadLength = cumulation.getInteger(at: cumulation.readerIndex + 16, endianness: .little, as: UInt32.self)
        else { return }
        let total = FrameHeader.size + Int(extensionLength) + Int(payloadLength)
        guard total <= self.loop.decoder.limits.maxFrameSize + FrameHeader.size + Int(UInt16.max) else { return }
        if total > cumulation.readableBytes {
            self.loop.cumulation.reserveCapacity(minimumWritableBytes: total - cumulation.readableBytes)
        }
    }
}
#endif
