/// Who may connect to a listener — one policy for local and remote clients,
/// checked on what was proven about them (``PeerIdentity``), before the
/// Intercom handshake: a refused client never reaches a handler.
///
/// - Locally (Unix sockets) the kernel's credentials: ``uids`` and ``gids``.
/// - Over TLS the verified client certificate: ``certificateNames`` (its common
///   name or any subject alternative name) — the authorities that may issue it
///   are the listener's ``TLSOptions`` trust roots.
/// - Plain TCP proves nothing about anyone: such clients pass only with
///   ``allowsUnauthenticated``, and a listener on `tcp://` refuses to start
///   without it (connecting to one needs ``Peer/Configuration/allowsPlainTCP``).
///
/// A client passes when every rule that applies to its kind of connection holds.
///
/// ```swift
/// var access = AccessPolicy()
/// access.uids = [0, 1000]                      // local: root and user 1000
/// access.certificateNames = ["analysis.lab"]   // remote: this certificate only
/// let listener = try await PeerListener.listen(on: endpoint, router: router, configuration: configuration, access: access)
/// ```
public struct AccessPolicy: Sendable, Hashable {
    /// Local clients whose effective user id is one of these may connect (nil: any
    /// user — who can reach the socket at all is still up to its file permissions).
    public var uids: Set<UInt32>?
    /// Local clients whose effective group id is one of these may connect (nil: any group).
    /// With both ``uids`` and ``gids`` set, matching either one is enough.
    public var gids: Set<UInt32>?
    /// TLS clients whose certificate holds one of these names (common name or a
    /// subject alternative name, see ``PeerIdentity/Certificate/names``) may
    /// connect; nil: any certificate the trust roots verify.
    public var certificateNames: Set<String>?
    /// Whether clients with nothing proven about them (plain TCP; TLS clients
    /// without a certificate when the server does not require one) may connect: false.
    public var allowsUnauthenticated = false

    /// A policy with the given rules; the defaults admit every client whose
    /// identity was proven by the kernel or a trusted certificate.
    public init(
        uids: Set<UInt32>? = nil, gids: Set<UInt32>? = nil, certificateNames: Set<String>? = nil,
        allowsUnauthenticated: Bool = false
    ) {
        self.uids = uids
        self.gids = gids
        self.certificateNames = certificateNames
        self.allowsUnauthenticated = allowsUnauthenticated
    }

    /// Why `identity` may not connect, or nil if it may.
    public func refusal(of identity: PeerIdentity) -> String? {
        if let credentials = identity.credentials {
            switch (self.uids, self.gids) {
            case (nil, nil): return nil
            case (let uids?, nil) where uids.contains(credentials.uid): return nil
            case (nil, let gids?) where gids.contains(credentials.gid): return nil
            case (let uids?, let gids?) where uids.contains(credentials.uid) || gids.contains(credentials.gid): return nil
            default:
                return "uid \(credentials.uid) (gid \(credentials.gid)) is not among the allowed users or groups"
            }
        }
        if let certificate = identity.certificate {
            guard let allowed = self.certificateNames else { return nil }
            if certificate.names.contains(where: allowed.contains) { return nil }
            return "the certificate \(certificate) holds none of the allowed names (\(allowed.sorted().joined(separator: ", ")))"
        }
        if self.allowsUnauthenticated { return nil }
        let place = identity.address.map { " at \($0)" } ?? ""
        return "nothing is proven about the client\(place) (no kernel credentials, no certificate), and the policy does not allow unauthenticated clients"
    }
}
