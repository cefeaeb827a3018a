#if os(Linux)
internal import Glibc
package import IntercomWire

/// How a connection on shared memory passes descriptors (docs/PROTOCOL.md,
/// "Descriptors"): one `SOCK_SEQPACKET` socket pair per direction, whose far
/// end each side handed the other with its ring during the upgrade. A frame
/// flagged `descriptors` has its descriptors in the next message of the
/// channel the other side sends on — sent before the frame's bytes entered the
/// ring, so it is always there when the frame is read, and in the same order
/// (both happen under the transport's writer lock).
///
/// The connection's socket is not used: NIO reads it with `read`, which would
/// discard descriptors attached to its bytes.
package final class DescriptorChannel: @unchecked Sendable {
    // `sending` is used and closed under the transport's writer lock; `receiving`
    // only on the transport's thread.
    private var sending: Int32
    private var receiving: Int32

    package init(sending: Int32, receiving: Int32) {
        self.sending = sending
        self.receiving = receiving
    }

    deinit {
        if self.sending >= 0 { close(self.sending) }
        if self.receiving >= 0 { close(self.receiving) }
    }

    /// A new close-on-exec `SOCK_SEQPACKET` pair: the end this side keeps for
    /// sending, and the one it gives the other side; nil if the system has none to give.
    package static func makePair() -> (keep: Int32, give: Int32)? {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            return nil
        }
        return (pair[0], pair[1])
    }

    /// Whether `fd` is a Unix-domain `SOCK_SEQPACKET` socket (what the other side
    /// must hand over; anything else is refused).
    package static func isSeqPacketSocket(_ fd: Int32) -> Bool {
        var type: Int32 = 0
        var domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else { return false }
        length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, 39 /* SO_DOMAIN */, &domain, &length) == 0 else { return false }
        return type == Int32(SOCK_SEQPACKET.rawValue) && domain == AF_UNIX
    }

    /// Sends the descriptors of the next flagged frame. Never blocks: when the
    /// other side holds too many unread, the frame is refused (`busy`).
    package func send(_ descriptors: [Int32]) throws(IntercomError) {
        guard self.sending >= 0 else { throw IntercomError(.closed, "the connection is closed") }
        var count = UInt32(descriptors.count).littleEndian
        let sent = withUnsafeBytes(of: &count) { DescriptorPassing.sendmsg(self.sending, $0, attaching: descriptors) }
        guard sent < 0 else { return }
        switch errno {
        case EAGAIN, ENOBUFS:
            throw IntercomError(.busy, "the other side has not yet taken the descriptors it was sent; try again later")
        case ETOOMANYREFS:
            throw IntercomError(.busy, "too many descriptors are in flight for this user (ETOOMANYREFS)")
        case EBADF:
            throw IntercomError(.invalidPayload, "a descriptor to send is not open")
        default:
            throw IntercomError(.peerLost, "sending descriptors failed: \(String(cString: strerror(errno)))")
        }
    }

    /// The descriptors of a frame flagged `descriptors` that just arrived: the
    /// next message, which must be there and carry as many as it says.
    package func receive() throws(ProtocolError) -> ReceivedDescriptors {
        guard self.receiving >= 0 else {
            throw ProtocolError(.malformedHeader, "a frame flagged with descriptors on a connection that agreed to pass none")
        }
        var count: UInt32 = 0
        let (received, descriptors, truncated) = withUnsafeMutableBytes(of: &count) {
            DescriptorPassing.recvmsg(self.receiving, into: $0, maxDescriptors: UnixDescriptor.maxPerFrame)
        }
        let list = ReceivedDescriptors(descriptors)  // owns them from here, whatever happens next
        guard received == 4, !truncated, Int(UInt32(littleEndian: count)) == descriptors.count, !descriptors.isEmpty else {
            throw ProtocolError(
                .malformedHeader,
                received < 0
                    ? "a frame flagged with descriptors arrived before its descriptors"
                    : "a frame's descriptors do not match their count (or exceed \(UnixDescriptor.maxPerFrame))")
        }
        return list
    }

    /// No more sends (under the writer lock, when the connection closes).
    func closeSending() {
        if self.sending >= 0 { close(self.sending) }
        self.sending = -1
    }

    /// No more receives (on the transport's thread, when it exits).
    func closeReceiving() {
        if self.receiving >= 0 { close(self.receiving) }
        self.receiving = -1
    }
}
#endif
