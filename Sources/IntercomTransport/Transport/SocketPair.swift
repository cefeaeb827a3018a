internal import NIOCore
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
package import Darwin
#endif

extension IntercomError {
    /// Maps a socket-level failure to a code a caller can act on.
    package init(systemError error: any Error, doing what: String) {
        if let error = error as? IntercomError {
            self = error
            return
        }
        if let io = error as? IOError {
            switch io.errnoCode {
            case EACCES, EPERM:
                self.init(.permissionDenied, "\(what): permission denied (\(io))", cause: io)
            case ENOENT, ECONNREFUSED:
                self.init(.connectionFailed, "\(what): nobody is listening there (\(io))", cause: io)
            default:
                self.init(.connectionFailed, "\(what): \(io)", cause: io)
            }
            return
        }
        self.init(.connectionFailed, "\(what): \(error)", cause: error)
    }
}

/// Two connected stream sockets (`socketpair(AF_UNIX, SOCK_STREAM)`), both
/// close-on-exec. Give one to a child as its standard input (or dup it to a
/// known number), adopt the other with ``Peer/adopt(fileDescriptor:router:configuration:)``.
public struct SocketPair: Sendable {
    /// One end.
    public let first: Int32
    /// The other end.
    public let second: Int32

    /// Makes a connected pair.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` with the OS error (e.g. out of descriptors).
    public init() throws(IntercomError) {
        var fds: [Int32] = [-1, -1]
        #if canImport(Glibc)
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        #else
        let type = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw IntercomError(.connectionFailed, "socketpair failed: \(String(cString: strerror(errno)))")
        }
        self.first = fds[0]
        self.second = fds[1]
    }
}

package enum UnixSocketPath {
    /// `sun_path` holds 108 bytes on Linux, 104 on macOS, including the final NUL.
    package static let maxLength = 103

    package static func check(_ path: String) throws(IntercomError) {
        guard !path.isEmpty, path.utf8.count <= Self.maxLength else {
            throw IntercomError(
                .invalidName,
                "Unix socket path '\(path)' is \(path.utf8.count) bytes; it must be 1...\(Self.maxLength) (use a shorter directory, e.g. under /tmp)")
        }
    }
}
