internal import IntercomTransport

/// Who is on the other end of a connection: what it said in its handshake, and
/// what was proven — for a local socket the kernel's credentials, over TLS the
/// certificate the other side presented and this side verified.
///
/// ```swift
/// try router.register("admin.reset") { (_: Int, context: CallContext) in
///     guard context.remote.credentials?.uid == 0 else { throw IntercomError(.permissionDenied, "root only") }
///     …
/// }
/// ```
///
/// Decide who may do what by ``credentials`` (the kernel's record, taken when the
/// connection was made) or ``certificate`` (verified in the TLS handshake), never
/// by ``name`` or ``reportedPID``, which the other side chose. A listener's
/// ``AccessPolicy`` does this for whole connections, before any handler runs.
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
    /// The certificate the other side presented in the TLS handshake, verified
    /// against this side's trust roots; nil for connections without TLS, and for
    /// TLS clients that presented none (when the server allows that).
    public let certificate: Certificate?
    /// The network address of the other side (`tcp://10.0.0.7:50112`) for TCP
    /// and TLS connections; nil for local ones.
    public let address: String?

    /// Whether anything about the other side was proven (kernel credentials or
    /// a verified certificate); false for plain TCP, socket pairs and in-memory connections.
    public var isAuthenticated: Bool { self.credentials != nil || self.certificate != nil }

    /// The other side's process id: the kernel's where it is local, else what it reported.
    public var pid: Int32 { self.credentials?.pid ?? self.reportedPID }

    /// What a verified X.509 certificate says about its holder.
    public struct Certificate: Sendable, Hashable, CustomStringConvertible {
        /// The subject's distinguished name (`CN=camera,O=Lab`).
        public let subject: String
        /// The subject's common name, if it has one.
        public let commonName: String?
        /// The subject alternative names, each with its kind: `DNS:camera.lab`,
        /// `IP:10.0.0.7`, `email:ops@lab`, `URI:spiffe://lab/camera`.
        public let subjectAlternativeNames: [String]
        /// The issuer's distinguished name.
        public let issuer: String

        /// A certificate identity as given (for tests and access policies).
        public init(subject: String, commonName: String?, subjectAlternativeNames: [String], issuer: String) {
            self.subject = subject
            self.commonName = commonName
            self.subjectAlternativeNames = subjectAlternativeNames
            self.issuer = issuer
        }

        /// The names an ``AccessPolicy`` matches: the common name and every
        /// subject alternative name without its kind (`camera.lab`, `10.0.0.7`).
        public var names: [String] {
            (self.commonName.map { [$0] } ?? [])
                + self.subjectAlternativeNames.map { name in
                    name.firstIndex(of: ":").map { String(name[name.index(after: $0)...]) } ?? name
                }
        }

        /// The subject and its alternative names.
        public var description: String {
            self.subjectAlternativeNames.isEmpty
                ? self.subject : "\(self.subject) [\(self.subjectAlternativeNames.joined(separator: ", "))]"
        }
    }

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
    public init(
        name: String, reportedPID: Int32, credentials: Credentials?, certificate: Certificate? = nil, address: String? = nil
    ) {
        self.name = name
        self.reportedPID = reportedPID
        self.credentials = credentials
        self.certificate = certificate
        self.address = address
    }

    init(name: String, reportedPID: Int32, kernel: KernelCredentials?, network: NetworkIdentity?) {
        self.init(
            name: name, reportedPID: reportedPID,
            credentials: kernel.map { Credentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) },
            certificate: network?.certificate, address: network?.address)
    }

    /// `camera (pid 42, uid 1000)`: the claimed name and pid, and what was proven
    /// (the kernel's uid, or the certificate's subject and the address).
    public var description: String {
        var proven = self.credentials.map { ", uid \($0.uid)" } ?? ""
        if let certificate = self.certificate { proven += ", certificate \(certificate)" }
        if let address = self.address { proven += ", at \(address)" }
        return "\(self.name) (pid \(self.reportedPID)\(proven))"
    }
}
