@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomCore
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Where a bus lives and the checks that make it safe to use.
///
/// A bus is a directory (no daemon): `$INTERCOM_BUS_DIR` if set, else
/// `$XDG_RUNTIME_DIR/intercom/<bus>`, else `/tmp/intercom-<uid>/<bus>`. It is
/// created 0700 and must be a real directory (not a symlink) owned by this user
/// with no access for group or others; otherwise nothing is served or read there.
///
/// Trust goes all the way up: the directory and every ancestor must be owned by
/// this user or root and not writable by group or others — a sticky
/// world-writable ancestor such as `/tmp` is accepted only where the entry below
/// it is this user's. The walk opens each component relative to the one above
/// (`O_NOFOLLOW`) and keeps the bus directory open; every file of the bus is then
/// addressed through that descriptor (`/proc/self/fd/N/NAME` on Linux), so nobody
/// can swap a path component between the check and a `connect`, `bind` or `open`.
final class BusDirectory: Sendable {
    /// The path as the user gave it (for messages).
    let path: String
    /// The prefix every file of the bus is addressed by: the open directory on
    /// Linux (`/proc/self/fd/N`), the path elsewhere.
    let base: String
    /// The open directory; -1 once ``closeDescriptor()`` ran.
    private let fd: Locked<Int32>

    /// The directory of bus `name` from the environment.
    static func resolve(bus name: String, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws(IntercomError) -> String
    {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw IntercomError(.invalidName, "bus name '\(name)' must be non-empty and contain no '/'")
        }
        if let explicit = environment["INTERCOM_BUS_DIR"], !explicit.isEmpty { return explicit }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return "\(runtime)/intercom/\(name)" }
        return "/tmp/intercom-\(getuid())/\(name)"
    }

    /// Opens (creating missing components 0700 if `create`) the directory at
    /// `path`, checking it and every ancestor on the way.
    ///
    /// - Throws: ``IntercomError/Code/permissionDenied`` naming the component that
    ///   is not safe (a symlink, not a directory, owned by someone else, or open to
    ///   group or others) and what to do; `serviceNotFound` if it does not exist
    ///   and `create` is false.
    init(path: String, create: Bool = true) throws(IntercomError) {
        self.path = path
        let fd = try Self.openTrusted(path, create: create)
        self.fd = Locked(fd)
        #if os(Linux)
        self.base = "/proc/self/fd/\(fd)"
        #else
        self.base = path
        #endif
    }

    deinit {
        self.closeDescriptor()
    }

    /// Closes the directory now rather than when the last reference goes (a
    /// closed service may be referenced a moment longer by a task finishing).
    /// Nothing may address files through ``base`` afterwards.
    func closeDescriptor() {
        let fd = self.fd.withLock { fd -> Int32 in
            defer { fd = -1 }
            return fd
        }
        if fd >= 0 { POSIX.close(fd) }
    }

    private static var uid: UInt32 { UInt32(getuid()) }

    /// Walks `path` from `/`, one `openat(…, O_NOFOLLOW)` per component, and checks
    /// each directory met before going below it.
    private static func openTrusted(_ path: String, create: Bool) throws(IntercomError) -> Int32 {
        var absolute = path
        if !absolute.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            guard getcwd(&buffer, buffer.count) != nil else {
                throw IntercomError(.permissionDenied, "cannot resolve the relative bus directory \(path)")
            }
            let length = buffer.firstIndex(of: 0) ?? buffer.count
            absolute = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
        }
        var pending = absolute.split(separator: "/").map(String.init)
        var current = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard current >= 0 else { throw IntercomError(.permissionDenied, "cannot open /") }
        var currentPath = "/"
        var info = stat()
        fstat(current, &info)
        var symlinks = 0
        while !pending.isEmpty {
            let component = pending.removeFirst()
            if component == "." || component.isEmpty { continue }
            if component == ".." {
                // Only reachable through a symlink's target or the user's own path:
                // go up by reopening the parent path (already checked on the way down).
                throw IntercomError(.permissionDenied, "bus directory \(path) contains '..'; give a plain path")
            }
            let isLast = pending.isEmpty
            let next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let nextPath = currentPath == "/" ? "/\(component)" : "\(currentPath)/\(component)"
            if next < 0 {
                let code = errno
                var linkInfo = stat()
                if (code == ELOOP || code == ENOTDIR), fstatat(current, component, &linkInfo, AT_SYMLINK_NOFOLLOW) == 0,
                    linkInfo.st_mode & S_IFMT == S_IFLNK
                {
                    // A symlink among the ancestors (e.g. /var/run -> /run) is followed
                    // only if this user or root made it (nobody else can write where
                    // it lies: that directory was checked). The bus directory itself
                    // must not be one.
                    guard !isLast else {
                        POSIX.close(current)
                        throw IntercomError(.permissionDenied, "bus directory \(nextPath) is a symbolic link; refusing to follow it")
                    }
                    guard linkInfo.st_uid == Self.uid || linkInfo.st_uid == 0, symlinks < 40 else {
                        POSIX.close(current)
                        throw IntercomError(
                            .permissionDenied,
                            "bus directory \(path) is not safe: \(nextPath) is a symbolic link owned by uid \(linkInfo.st_uid); only this user (uid \(Self.uid)) or root may own the path to a bus")
                    }
                    symlinks += 1
                    var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                    let length = readlinkat(current, component, &target, target.count - 1)
                    guard length > 0 else {
                        POSIX.close(current)
                        throw IntercomError(.permissionDenied, "cannot read the symbolic link \(nextPath)")
                    }
                    let destination = String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    let parts = destination.split(separator: "/").map(String.init)
                    if destination.hasPrefix("/") {
                        // Start again from the root with the target, then the rest.
                        POSIX.close(current)
                        current = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                        currentPath = "/"
                        fstat(current, &info)
                    }
                    if parts.contains("..") {
                        POSIX.close(current)
                        throw IntercomError(.permissionDenied, "bus directory \(path) lies behind \(nextPath) -> \(destination); give the real path")
                    }
                    pending = parts + pending
                    continue
                }
                if code == ENOENT, create {
                    guard mkdirat(current, component, 0o700) == 0 || errno == EEXIST else {
                        let code = errno
                        POSIX.close(current)
                        throw IntercomError(
                            code == EACCES ? .permissionDenied : .connectionFailed,
                            "cannot create bus directory \(nextPath): \(String(cString: strerror(code)))")
                    }
                    pending.insert(component, at: 0)
                    continue
                }
                POSIX.close(current)
                if code == ENOENT { throw IntercomError(.serviceNotFound, "bus directory \(path) does not exist") }
                if code == ENOTDIR { throw IntercomError(.permissionDenied, "bus directory \(path): \(nextPath) is not a directory") }
                throw IntercomError(.permissionDenied, "cannot open \(nextPath): \(String(cString: strerror(code)))")
            }
            var nextInfo = stat()
            fstat(next, &nextInfo)
            // The directory we are leaving may be writable by others only if it is
            // sticky and what we found in it is ours (nobody else can rename it).
            if let problem = Self.problem(with: info, at: currentPath, child: nextInfo) {
                POSIX.close(current)
                POSIX.close(next)
                throw IntercomError(.permissionDenied, "bus directory \(path) is not safe: \(problem)")
            }
            POSIX.close(current)
            current = next
            currentPath = nextPath
            info = nextInfo
        }
        // The bus directory itself: this user's, private.
        guard info.st_uid == Self.uid else {
            POSIX.close(current)
            throw IntercomError(
                .permissionDenied,
                "bus directory \(path) belongs to uid \(info.st_uid), not to this user (uid \(Self.uid)); remove it, or choose another with INTERCOM_BUS_DIR")
        }
        guard info.st_mode & 0o077 == 0 else {
            POSIX.close(current)
            throw IntercomError(
                .permissionDenied,
                "bus directory \(path) has mode \(String(info.st_mode & 0o777, radix: 8)); it must be 0700 (chmod 700 \(path))")
        }
        return current
    }

    /// What is wrong with trusting the ancestor `directory` (at `path`) that holds `child`, or nil.
    private static func problem(with directory: stat, at path: String, child: stat) -> String? {
        guard directory.st_uid == Self.uid || directory.st_uid == 0 else {
            return "\(path) is owned by uid \(directory.st_uid); only this user (uid \(Self.uid)) or root may own the directories above a bus (remove it, or choose another directory with INTERCOM_BUS_DIR)"
        }
        let mode = UInt32(directory.st_mode)  // mode_t is 16 bits on Darwin
        let writableByOthers = mode & 0o022 != 0
        let sticky = mode & UInt32(S_ISVTX) != 0
        if writableByOthers && !(sticky && child.st_uid == Self.uid) {
            let octal = String(mode & 0o7777, radix: 8)
            return sticky
                ? "\(path) (mode \(octal)) is writable by others and its entry below is owned by uid \(child.st_uid), not this user (uid \(Self.uid)); someone else made it: remove it or choose another directory with INTERCOM_BUS_DIR"
                : "\(path) (mode \(octal)) is writable by group or others, who could replace the bus; chmod go-w \(path) or choose another directory with INTERCOM_BUS_DIR"
        }
        return nil
    }

    func socketPath(_ service: String) -> String { "\(self.base)/\(service).sock" }
    func lockPath(_ service: String) -> String { "\(self.base)/\(service).lock" }
    func recordPath(_ service: String) -> String { "\(self.base)/\(service).json" }

    /// Removes `path` if it is what the bus writes — a regular file of this
    /// user — and leaves anything else alone.
    func removeOwnedFile(_ path: String) {
        var info = stat()
        if lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_uid == getuid() {
            unlink(path)
        }
    }

    /// The names of the files in the directory.
    func entries() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: self.base)) ?? []
    }

    /// Checks a service name: dot-separated words, usable as a file name, and short
    /// enough that its socket path fits the platform's limit.
    func checkServiceName(_ name: String) throws(IntercomError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
        guard !name.isEmpty, name.count <= 200, name.allSatisfy({ allowed.contains($0) }), !name.hasPrefix("."),
            !name.hasSuffix("."), !name.contains("..")
        else {
            throw IntercomError(
                .invalidName, "service name '\(name)' must be letters, digits, '_', '-' and dots between words")
        }
        try UnixSocketPath.check(self.socketPath(name))
    }

    /// The names of services with a lock file here.
    func lockedNames() -> [String] {
        self.entries().filter { $0.hasSuffix(".lock") }.map { String($0.dropLast(5)) }.sorted()
    }
}
