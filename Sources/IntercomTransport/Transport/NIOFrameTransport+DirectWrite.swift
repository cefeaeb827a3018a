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
/// duplicate is closed when the channel closes, when the connection moves to
/// shared memory and after a protocol violation (where NIO writes on its own);
/// until then the kernel keeps the socket open for it.
struct DirectWrite {
    /// The duplicate of the socket; -1 while direct writes are off.
    private(set) var descriptor: Int32 = -1
    /// Batches handed to NIO whose bytes it has not yet written to the kernel.
    var batchesInNIO = 0

    /// Direct writes are possible (the duplicate exists).
    var isOn: Bool { self.descriptor >= 0 }

    /// Nothing of ours waits in NIO, so bytes written now come after all of it.
    var mayWrite: Bool { self.descriptor >= 0 && self.batchesInNIO == 0 }

    init(descriptor: Int32 = -1) {
        self.descriptor = descriptor
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
    }
}

extension NIOFrameTransport {
    /// Turns direct writes off for good (before NIO writes on its own, outside
    /// the outbox: the move to shared memory, the error frame after a violation).
    /// Returns once no direct write is under way.
    func turnOffDirectWrites() {
        self.outbox.withLock { $0.direct.turnOff() }
    }
}
