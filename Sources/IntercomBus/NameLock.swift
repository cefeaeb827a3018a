internal import IntercomTransport
internal import IntercomCore
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// An exclusive `flock` on `<name>.lock`, held for a service's whole life.
///
/// The kernel drops the lock when the holder dies, however it dies, so a crashed
/// service is detected without guessing from pids or timestamps, and whoever
/// holds the lock may safely remove a dead holder's leftover files.
final class NameLock: Sendable {
    let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    enum Outcome {
        case acquired(NameLock)
        case held
    }

    /// Tries to take the lock at `path` without waiting.
    ///
    /// - Throws: ``IntercomError/Code/permissionDenied`` if the path is a symlink or
    ///   not a regular file of this user (never followed, never deleted).
    static func tryAcquire(_ path: String, create: Bool) throws(IntercomError) -> Outcome? {
        while true {
            // Read-only: `flock` needs no write access, and closing a read-only
            // descriptor is no IN_CLOSE_WRITE — a probe of a held lock used to wake
            // this process's own directory watcher, so a claimant waiting for a
            // holder that would not quit spun a CPU until its timeout.
            let flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0)
            let fd = open(path, flags, 0o600)
            guard fd >= 0 else {
                let code = errno
                if code == ENOENT, !create { return nil }
                if code == ELOOP {
                    throw IntercomError(.permissionDenied, "\(path) is a symbolic link; refusing to follow it")
                }
                throw IntercomError(.permissionDenied, "cannot open lock file \(path): \(String(cString: strerror(code)))")
            }
            var info = stat()
            guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == getuid() else {
                close(fd)
                throw IntercomError(.permissionDenied, "\(path) is not a regular file owned by this user; refusing it")
            }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                close(fd)
                return .held
            }
            // The previous holder removes the file before unlocking: if what we locked
            // is no longer the file at `path`, we locked a dead inode; try again.
            var current = stat()
            if lstat(path, &current) == 0, current.st_dev == info.st_dev, current.st_ino == info.st_ino {
                return .acquired(NameLock(path: path, fd: fd))
            }
            close(fd)
            if !create { return nil }
        }
    }

    /// Removes the lock file, then releases the lock (in that order: see `tryAcquire`).
    func release() {
        unlink(self.path)
        close(self.fd)
    }
}
