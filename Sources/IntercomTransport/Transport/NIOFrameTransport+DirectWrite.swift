#if os(Linux)
internal import Glibc
#endif
internal import NIOCore

/// Writing a frame from the sender's own thread straight to the socket, when
/// nothing else is on its way out.
///
/// Otherwise a sender on another thread than the connection's event loop puts
/// its frame in the outbox and wakes the loop to write it: one more thread
/// woken per call or reply (on an idle machine tens of microseconds), for one
/// `send(2)` the sender could have made itself. That is done here, under the
/// outbox's lock, only when the outbox is empty, no drain is scheduled and NIO
/// holds no bytes of ours not yet given to the kernel — so the order of bytes
/// on the stream is the order of the sends. Senders on the loop itself keep
/// batching (their frames of one loop turn go out in one `writev`).
///
/// The write uses a duplicate of the socket owned here, never the number NIO
/// holds: NIO may close its descriptor on the loop at any moment, and a number
/// written to after that could already name another file or connection. The
/// duplicate is made on the loop (where the socket's cookie proves it is the
/// channel's) at the first drain after a sender on another thread came, so a
/// connection only ever used from its loop costs no extra descriptor. It is
/// closed when the channel closes, when the connection moves to shared memory
/// and after a protocol violation (where NIO writes on its own); until then the
/// kernel keeps the socket open for it.
struct DirectWrite {
    /// The duplicate of the socket; -1 while direct writes are off.
    private(set) var descriptor: Int32 = -1
    /// A sender on another thread came: the loop makes the duplicate at its next drain.
    var wanted = false
    /// Off for good (or the duplicate could not be made): never made again.
    private(set) var ended = false
    /// Batches handed to NIO whose bytes it has not yet written to the kernel.
    var batchesInNIO = 0

    /// Direct writes are possible (the duplicate exists).
    var isOn: Bool { self.descriptor >= 0 }

    /// Nothing of ours waits in NIO, so bytes written now come after all of it.
    var mayWrite: Bool { self.descriptor >= 0 && self.batchesInNIO == 0 }

    /// Whether the next drain should make the duplicate (and clears the wish).
    mutating func takeWish() -> Bool {
        defer { self.wanted = false }
        return self.wanted && self.descriptor < 0 && !self.ended
    }

    /// Takes the duplicate the loop made (nil: it could not), unless direct
    /// writes ended meanwhile; returns a descriptor the caller must close then.
    mutating func install(_ copy: Int32?) -> Int32? {
        guard let copy else {
            self.ended = true
            return nil
        }
        guard !self.ended else { return copy }
        self.descriptor = copy
        return nil
    }

    /// Writes as much of `bytes` as the socket takes now, without waiting, and
    /// moves its reader index past it. A failure other than a full socket turns
    /// direct writes off; the bytes then go through NIO, which meets the same
    /// error and closes the channel.
    mutating func write(_ bytes: inout ByteBuffer) {
        #if os(Linux)
        let written = bytes.withUnsafeReadableBytes { raw -> Int in
            Glibc.send(self.descriptor, raw.baseAddress, raw.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
        }
        if written > 0 {
            bytes.moveReaderIndex(forwardBy: written)
        } else if written < 0, errno != EAGAIN, errno != EWOULDBLOCK, errno != EINTR {
            self.turnOff()
        }
        #endif
    }

    /// Closes the duplicate: no direct write from now on.
    mutating func turnOff() {
        #if os(Linux)
        if self.descriptor >= 0 { Glibc.close(self.descriptor) }
        #endif
        self.descriptor = -1
        self.ended = true
    }
}

extension NIOFrameTransport {
    /// On the event loop, after a drain that found a sender from another thread:
    /// makes the duplicate and hands it to the outbox.
    func makeDirectWriteDescriptor() {
        let copy = self.duplicateUnixSocket()
        let (unused, installed) = self.outbox.withLock { outbox -> (Int32?, Bool) in
            let unused = outbox.direct.install(copy)
            // Bytes of earlier batches may still wait in NIO: no direct write
            // until it has written them (counted like a batch of their own).
            if outbox.direct.isOn { outbox.direct.batchesInNIO += 1 }
            return (unused, outbox.direct.isOn)
        }
        #if os(Linux)
        if let unused { Glibc.close(unused) }
        #endif
        if installed { self.untrackWhenWritten() }
    }

    /// Turns direct writes off for good (before NIO writes on its own, outside
    /// the outbox: the move to shared memory, the error frame after a violation).
    /// Returns once no direct write is under way.
    func turnOffDirectWrites() {
        self.outbox.withLock { $0.direct.turnOff() }
    }
}
