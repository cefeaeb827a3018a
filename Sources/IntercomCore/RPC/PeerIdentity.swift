internal import IntercomTransport

/// Who is on the other end of a connection: what it said in its handshake, and —
/// for a local socket — what the kernel says.
///
/// ```swift
/// try router.register("admin.reset") { (_: Int, context: CallContext) in
///     guard context.remote.credentials?.uid == 0 else { throw IntercomError(.permissionDenied, "root only") }
///     …
/// }
/// ```
///
/// Decide who may do what by ``credentials`` (the kernel's record, taken when the
/// connection was made), never by ``name`` or ``reportedPID``, which the other
/// side chose.
public struct PeerIdentity: Sendable, Hashable, CustomStringConvertible {
    /// The name the other side gave in its handshake (its claim).
    public let name: String
    /// The process id the other side gave in its handshake (its claim).
    public let reportedPID: Int32
    /// The kernel's credentials of the process at the other end (`SO_PEERCRED`),
    /// for a Unix socket that was connected or accepted; nil for a socket pair
    /// (the kernel reports the pair's creator on both ends) and for in-memory
    /// connections.
    public let credentials: Credentials?

    /// A process's identity as the kernel records it.
    public struct Credentials: Sendable, Hashable {
        /// The process id (0 where the platform does not say).
        public let pid: Int32
        /// The effective user id.
        public let uid: UInt32
        /// The effective group id.
        public let gid: UInt32

        /// Credentials as given (for tests and access policies).
        public init(pid: Int32, uid: UInt32, gid: UInt32) {
            self.pid = pid
            self.uid = uid
            self.gid = gid
        }
    }

    /// An identity as given (for tests and access policies).
    public init(name: String, reportedPID: Int32, credentials: Credentials?) {
        self.name = name
        self.reportedPID = reportedPID
        self.credentials = credentials
    }

    init(name: String, reportedPID: Int32, kernel: KernelCredentials?) {
        self.init(
            name: name, reportedPID: reportedPID,
            credentials: kernel.map { Credentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) })
    }

    /// `camera (pid 42, uid 1000)`: the claimed name and pid, and the kernel's uid
    /// if known.
    public var description: String {
        let uid = self.credentials.map { ", uid \($0.uid)" } ?? ""
        return "\(self.name) (pid \(self.reportedPID)\(uid))"
    }
}
