internal import NIOCore
#if canImport(Glibc)
package import Glibc
#elseif canImport(Darwin)
package import Darwin
#endif

/// The kernel's record of the process at the other end of a local socket
/// (`SO_PEERCRED`): taken when the connection was made, never what the peer claims.
package struct KernelCredentials: Sendable, Equatable {
    package var pid: Int32
    package var uid: UInt32
    package var gid: UInt32
}

/// Unix-domain stream sockets made and accepted by Intercom itself, so that it
/// always knows the descriptor behind a connection (NIO does not hand it out):
/// the shared-memory upgrade duplicates it in O(1), both ends check the other's
/// kernel credentials before a byte of the protocol moves, and accepting can back
/// off when the process runs out of descriptors.
package enum UnixSocket {
    /// A new close-on-exec, non-blocking stream socket.
    package static func make() throws(IntercomError) -> Int32 {
        #if canImport(Glibc)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_STREAM, 0)
        if fd >= 0 {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        #endif
        guard fd >= 0 else {
            throw IntercomError(.connectionFailed, "cannot make a socket: \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Fills a `sockaddr_un` for `path` (checked by ``UnixSocketPath/check(_:)``).
    package static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Binds `fd` to `path` and listens; false with `errno` set if either fails.
    package static func bindAndListen(_ fd: Int32, at path: String, backlog: Int32) -> Bool {
        guard Self.withAddress(path, { bind(fd, $0, $1) }) == 0 else { return false }
        #if canImport(Glibc)
        return Glibc.listen(fd, backlog) == 0
        #else
        return Darwin.listen(fd, backlog) == 0
        #endif
    }

    /// Connects a new socket to `path`, waiting while the listener's backlog is
    /// full until `deadline`.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` (nobody listening),
    ///   `permissionDenied`, `timeout` (the backlog stayed full).
    package static func connect(to path: String, until deadline: ContinuousClock.Instant) async throws(IntercomError) -> Int32 {
        try UnixSocketPath.check(path)
        let fd = try Self.make()
        while true {
            let result = Self.withAddress(path) { POSIX.connect(fd, $0, $1) }
            if result == 0 { return fd }
            let code = errno
            switch code {
            case EINTR:
                continue
            case EAGAIN:
                // The listener's backlog is full (a non-blocking Unix connect does
                // not queue); it drains as the listener accepts.
                guard ContinuousClock.now < deadline else {
                    POSIX.close(fd)
                    throw IntercomError(.timeout, "connecting to \(path): the listener accepted no connection in time (its backlog is full)")
                }
                try? await Task.sleep(for: .milliseconds(2))
                if Task.isCancelled {
                    POSIX.close(fd)
                    throw IntercomError(.cancelled, "connecting to \(path) was cancelled")
                }
            default:
                POSIX.close(fd)
                let reason = String(cString: strerror(code))
                let cause = IOError(errnoCode: code, reason: "connect")
                switch code {
                case EACCES, EPERM:
                    throw IntercomError(.permissionDenied, "connecting to \(path): permission denied (\(reason))", cause: cause)
                case ENOENT, ECONNREFUSED:
                    throw IntercomError(
                        .connectionFailed, "connecting to \(path): nobody is listening there (\(reason))", cause: cause)
                default:
                    throw IntercomError(.connectionFailed, "connecting to \(path): \(reason)", cause: cause)
                }
            }
        }
    }

    /// The kernel's credentials of the process at the other end of `fd`.
    static func peerCredentials(_ fd: Int32) -> KernelCredentials? {
        #if canImport(Glibc)
        var credentials = KernelCredentials(pid: 0, uid: 0, gid: 0)  // struct ucred's layout
        var length = socklen_t(MemoryLayout<KernelCredentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        return credentials
        #else
        var uid = uid_t(0)
        var gid = gid_t(0)
        guard getpeereid(fd, &uid, &gid) == 0 else { return nil }
        return KernelCredentials(pid: 0, uid: uid, gid: gid)
        #endif
    }

    /// The kernel's credentials of the other end of `fd` if it is a Unix socket
    /// made by connecting or accepting — one end has a path (or an abstract
    /// name). Nil for a socket pair, where both ends are unnamed and the kernel
    /// reports the pair's creator on both, and for anything that is not a socket.
    package static func connectedPeerCredentials(_ fd: Int32) -> KernelCredentials? {
        func isNamed(_ query: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> Bool? {
            var address = sockaddr_un()
            var length = socklen_t(MemoryLayout<sockaddr_un>.size)
            let result = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { query(fd, $0, &length) }
            }
            guard result == 0, address.sun_family == sa_family_t(AF_UNIX) else { return nil }
            return length > socklen_t(MemoryLayout<sa_family_t>.size)
        }
        guard let local = isNamed({ getsockname($0, $1, $2) }), let remote = isNamed({ getpeername($0, $1, $2) }),
            local || remote
        else { return nil }
        return Self.peerCredentials(fd)
    }

    /// Why the process at the other end of `fd` is not trusted (nil if it is):
    /// its uid must be in `allowed` (nil allows anyone).
    package static func refusal(of fd: Int32, allowed: Set<UInt32>?, role: String) -> String? {
        guard let allowed else { return nil }
        guard let credentials = Self.peerCredentials(fd) else {
            return "cannot read the \(role)'s credentials: \(String(cString: strerror(errno)))"
        }
        guard allowed.contains(credentials.uid) else {
            let list = allowed.sorted().map(String.init).joined(separator: ", ")
            return "the \(role) runs as uid \(credentials.uid) (pid \(credentials.pid)), which is not trusted (trusted uids: \(list))"
        }
        return nil
    }
}
