#if os(Linux)
internal import Glibc

/// Raw socket operations the shared-memory upgrade and the descriptor channel need and NIO does not offer:
/// finding the descriptor behind a channel, and sending and receiving bytes with
/// descriptors attached (`SCM_RIGHTS`).
enum DescriptorPassing {
    private static let solSocket: Int32 = 1  // SOL_SOCKET
    private static let soCookie: Int32 = 57  // SO_COOKIE
    private static let soDomain: Int32 = 39  // SO_DOMAIN
    private static let soType: Int32 = 3  // SO_TYPE
    private static let scmRights: Int32 = 1  // SCM_RIGHTS
    private static let cmsgHeaderSize = MemoryLayout<cmsghdr>.size  // CMSG_LEN(0) on Linux

    /// The kernel's unique cookie of the socket behind `fd`, or nil if it is not a socket.
    static func cookie(of fd: Int32) -> UInt64? {
        var cookie: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        guard getsockopt(fd, Self.solSocket, Self.soCookie, &cookie, &length) == 0 else { return nil }
        return cookie
    }

    /// A close-on-exec duplicate of `fd` if it is the Unix-domain stream socket
    /// with `cookie` (checked on the duplicate, so a reused number is refused).
    static func duplicateUnixStreamSocket(_ fd: Int32, cookie: UInt64) -> Int32? {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 3)
        guard copy >= 0 else { return nil }
        guard Self.isUnixStreamSocket(copy, cookie: cookie) else {
            close(copy)
            return nil
        }
        return copy
    }

    /// Whether `fd` is the Unix-domain stream socket with `cookie`.
    static func isUnixStreamSocket(_ fd: Int32, cookie: UInt64) -> Bool {
        Self.cookie(of: fd) == cookie && Self.intOption(fd, Self.soDomain) == AF_UNIX
            && Self.intOption(fd, Self.soType) == Int32(SOCK_STREAM.rawValue)
    }

    private static func intOption(_ fd: Int32, _ name: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, Self.solSocket, name, &value, &length) == 0 else { return nil }
        return value
    }

    /// Sends all of `bytes` on the blocking-or-not socket `fd`, with `descriptors`
    /// attached to the first byte, waiting for room until `deadline`.
    static func send(
        _ bytes: [UInt8], attaching descriptors: [Int32], on fd: Int32, until deadline: ContinuousClock.Instant
    ) throws(IntercomError) {
        var offset = 0
        var attach = descriptors
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { raw -> Int in
                Self.sendmsg(fd, UnsafeRawBufferPointer(rebasing: raw[offset...]), attaching: attach)
            }
            if sent >= 0 {
                offset += sent
                attach = []
            } else if errno == EAGAIN || errno == EINTR {
                try Self.poll(fd, events: Int16(POLLOUT), until: deadline)
            } else {
                throw IntercomError(.peerLost, "sending the shared-memory offer failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// One `sendmsg` of `bytes` with `descriptors` attached (none: a plain send),
    /// never blocking: the bytes sent, or -1 with `errno` set.
    static func sendmsg(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, attaching descriptors: [Int32]) -> Int {
        let controlSize = descriptors.isEmpty ? 0 : Self.cmsgHeaderSize + (4 * descriptors.count + 7) & ~7  // CMSG_SPACE
        var control = [UInt8](repeating: 0, count: max(controlSize, 1))
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        return control.withUnsafeMutableBytes { control -> Int in
            withUnsafeMutablePointer(to: &iov) { iov -> Int in
                var message = msghdr()
                message.msg_iov = iov
                message.msg_iovlen = 1
                if !descriptors.isEmpty {
                    let header = control.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                    header.pointee.cmsg_len = Self.cmsgHeaderSize + 4 * descriptors.count  // CMSG_LEN
                    header.pointee.cmsg_level = Self.solSocket
                    header.pointee.cmsg_type = Self.scmRights
                    for (index, descriptor) in descriptors.enumerated() {
                        control.storeBytes(of: descriptor, toByteOffset: Self.cmsgHeaderSize + 4 * index, as: Int32.self)
                    }
                    message.msg_control = control.baseAddress
                    message.msg_controllen = controlSize
                }
                return Glibc.sendmsg(fd, &message, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            }
        }
    }

    /// One non-blocking `recvmsg` into `bytes`: how many bytes arrived (-1 with
    /// `errno` set), and the descriptors that came with them (close-on-exec; more
    /// than `maxDescriptors` are closed and reported as truncation).
    static func recvmsg(
        _ fd: Int32, into bytes: UnsafeMutableRawBufferPointer, maxDescriptors: Int
    ) -> (received: Int, descriptors: [Int32], truncated: Bool) {
        let controlSize = Self.cmsgHeaderSize + maxDescriptors * 4
        var control = [UInt8](repeating: 0, count: controlSize)
        var descriptors: [Int32] = []
        var truncated = false
        var iov = iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)
        let received = control.withUnsafeMutableBytes { control -> Int in
            withUnsafeMutablePointer(to: &iov) { iov -> Int in
                var message = msghdr()
                message.msg_iov = iov
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = controlSize
                let received = Glibc.recvmsg(fd, &message, Int32(MSG_DONTWAIT) | 0x4000_0000 /* MSG_CMSG_CLOEXEC */)
                guard received >= 0 else { return received }
                truncated = message.msg_flags & Int32(MSG_CTRUNC) != 0 || message.msg_flags & Int32(MSG_TRUNC) != 0
                // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR by hand).
                var offset = 0
                let length = Int(message.msg_controllen)
                while offset + Self.cmsgHeaderSize <= length {
                    let header = control.load(fromByteOffset: offset, as: cmsghdr.self)
                    let total = Int(header.cmsg_len)
                    guard total >= Self.cmsgHeaderSize, offset + total <= length else { break }
                    if header.cmsg_level == Self.solSocket, header.cmsg_type == Self.scmRights {
                        for index in 0..<(total - Self.cmsgHeaderSize) / 4 {
                            descriptors.append(
                                control.loadUnaligned(fromByteOffset: offset + Self.cmsgHeaderSize + 4 * index, as: Int32.self))
                        }
                    }
                    offset += (total + 7) & ~7
                }
                return received
            }
        }
        return (received, descriptors, truncated)
    }

    /// Receives what is there (waiting until `deadline` for something): the bytes,
    /// and every descriptor that came with them (close-on-exec). Empty bytes mean
    /// the other side closed the stream.
    static func receive(on fd: Int32, until deadline: ContinuousClock.Instant) throws(IntercomError) -> (bytes: [UInt8], descriptors: [Int32]) {
        while true {
            var bytes = [UInt8](repeating: 0, count: 4096)
            let (received, descriptors, _) = bytes.withUnsafeMutableBytes { Self.recvmsg(fd, into: $0, maxDescriptors: 8) }
            if received >= 0 {
                return (Array(bytes.prefix(received)), descriptors)
            } else if errno == EAGAIN || errno == EINTR {
                try Self.poll(fd, events: Int16(POLLIN), until: deadline)
            } else {
                throw IntercomError(.peerLost, "receiving the shared-memory offer failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Waits for `events` on `fd` until `deadline`.
    static func poll(_ fd: Int32, events: Int16, until deadline: ContinuousClock.Instant) throws(IntercomError) {
        let remaining = deadline - .now
        guard remaining > .zero else {
            throw IntercomError(.timeout, "the other side did not complete the handshake's descriptor exchange in time")
        }
        var entry = pollfd(fd: fd, events: events, revents: 0)
        let milliseconds = Int32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
        _ = Glibc.poll(&entry, 1, milliseconds)
    }
}
#endif
