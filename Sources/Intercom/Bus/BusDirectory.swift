internal import Foundation
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
struct BusDirectory: Sendable {
    let path: String

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

    /// Opens (creating if needed) the directory at `path` and checks it.
    ///
    /// - Throws: ``IntercomError/Code/permissionDenied`` if it (or a parent Intercom
    ///   created) is a symlink, not a directory, owned by someone else, or open to
    ///   group or others.
    init(path: String, create: Bool = true) throws(IntercomError) {
        self.path = path
        if create { try Self.makeDirectories(path) }
        try Self.checkPrivate(path)
    }

    /// Creates each missing component with mode 0700 (existing parents are left alone).
    private static func makeDirectories(_ path: String) throws(IntercomError) {
        var info = stat()
        if lstat(path, &info) == 0 { return }
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty, parent != path, lstat(parent, &info) != 0 {
            try Self.makeDirectories(parent)
            try Self.checkPrivate(parent)
        }
        if mkdir(path, 0o700) != 0, errno != EEXIST {
            let code = errno
            throw IntercomError(
                code == EACCES ? .permissionDenied : .connectionFailed,
                "cannot create bus directory \(path): \(String(cString: strerror(code)))")
        }
    }

    /// Refuses a directory another user could write to or replace.
    static func checkPrivate(_ path: String) throws(IntercomError) {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            throw IntercomError(.serviceNotFound, "bus directory \(path) does not exist")
        }
        let kind = info.st_mode & S_IFMT
        guard kind != S_IFLNK else {
            throw IntercomError(.permissionDenied, "bus directory \(path) is a symbolic link; refusing to follow it")
        }
        guard kind == S_IFDIR else {
            throw IntercomError(.permissionDenied, "bus directory \(path) is not a directory")
        }
        guard info.st_uid == getuid() else {
            throw IntercomError(
                .permissionDenied, "bus directory \(path) belongs to uid \(info.st_uid), not to this user (uid \(getuid()))")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw IntercomError(
                .permissionDenied,
                "bus directory \(path) has mode \(String(info.st_mode & 0o777, radix: 8)); it must be 0700 (chmod 700 \(path))")
        }
    }

    func socketPath(_ service: String) -> String { "\(self.path)/\(service).sock" }
    func lockPath(_ service: String) -> String { "\(self.path)/\(service).lock" }
    func recordPath(_ service: String) -> String { "\(self.path)/\(service).json" }

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
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: self.path)) ?? []
        return entries.filter { $0.hasSuffix(".lock") }.map { String($0.dropLast(5)) }.sorted()
    }
}
