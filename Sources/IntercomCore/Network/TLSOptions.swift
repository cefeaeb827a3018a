internal import NIOSSL
internal import X509
public import IntercomTransport
internal import SwiftASN1

/// This side's certificate and key, the certificate authorities it trusts, and
/// how strictly it checks the other side — for `tls://` endpoints, on both the
/// connecting and the listening side (``Peer/Configuration/tls``).
///
/// Mutual authentication is the default: a server asks every client for a
/// certificate signed by one of the trusted authorities and refuses those
/// without; a client checks that the server's certificate is signed by one of
/// them and names the host it connected to. TLS 1.3 only, unless lowered.
///
/// ```swift
/// configuration.tls = try TLSOptions.pemFiles(certificate: "client.pem", privateKey: "client.key", trustRoots: "ca.pem")
/// let peer = try await Peer.connect(to: try Endpoint(parsing: "tls://camera.lab:7411"), configuration: configuration)
/// ```
///
/// The certificates are checked with swift-certificates' RFC 5280 verifier
/// (validity dates, chain to a trust root, CA constraints); the handshake and
/// the cryptography are BoringSSL's, through swift-nio-ssl.
public struct TLSOptions: Sendable {
    /// The lowest TLS version this side accepts.
    public struct Version: Sendable, Hashable {
        let nio: TLSVersion
        /// TLS 1.2 (for peers that cannot do 1.3).
        public static let tls12 = Version(nio: .tlsv12)
        /// TLS 1.3 (the default).
        public static let tls13 = Version(nio: .tlsv13)
    }

    let certificateChain: [NIOSSLCertificate]
    let privateKey: NIOSSLPrivateKey?
    let roots: [NIOSSLCertificate]
    /// The roots, parsed for the verifier.
    let rootCertificates: [X509.Certificate]

    /// The name a client expects in the server's certificate; nil: the host of
    /// the endpoint it connects to. (Set it when connecting by IP address to a
    /// server whose certificate names it by DNS name.)
    public var serverName: String?
    /// Whether a client checks that the server's certificate names the host
    /// (or ``serverName``): true by default. Turning it off accepts any server
    /// holding a certificate from a trusted authority.
    public var verifiesServerName = true
    /// Whether a server requires every client to present a certificate from a
    /// trusted authority: true by default (mutual authentication). When false,
    /// clients without one connect with no certificate identity, and the
    /// listener's ``AccessPolicy`` decides whether that is enough.
    public var requiresClientCertificate = true
    /// The lowest TLS version accepted: ``Version/tls13`` by default.
    public var minimumVersion: Version = .tls13

    /// Reads PEM files: this side's certificate chain (leaf first), its private
    /// key, and the certificates of the authorities it trusts.
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` naming the file that
    ///   could not be read or parsed.
    public static func pemFiles(certificate: String, privateKey: String, trustRoots: String) throws(IntercomError) -> TLSOptions {
        let chain = try Self.loading("certificate chain", certificate) { try NIOSSLCertificate.fromPEMFile(certificate) }
        let key = try Self.loading("private key", privateKey) { try NIOSSLPrivateKey(file: privateKey, format: .pem) }
        let roots = try Self.loading("trust roots", trustRoots) { try NIOSSLCertificate.fromPEMFile(trustRoots) }
        return try TLSOptions(chain: chain, key: key, roots: roots)
    }

    /// Takes PEM text held in memory: this side's certificate chain (leaf
    /// first), its private key, and the certificates of the authorities it trusts.
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` naming what did not parse.
    public static func pem(certificate: String, privateKey: String, trustRoots: String) throws(IntercomError) -> TLSOptions {
        let chain = try Self.loading("certificate chain", "PEM text") { try NIOSSLCertificate.fromPEMBytes(Array(certificate.utf8)) }
        let key = try Self.loading("private key", "PEM text") { try NIOSSLPrivateKey(bytes: Array(privateKey.utf8), format: .pem) }
        let roots = try Self.loading("trust roots", "PEM text") { try NIOSSLCertificate.fromPEMBytes(Array(trustRoots.utf8)) }
        return try TLSOptions(chain: chain, key: key, roots: roots)
    }

    /// Reads the certificates of the authorities this side trusts from a PEM
    /// file, for a client that presents no certificate of its own (accepted only
    /// by servers that do not require one).
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` if the file cannot be read or parsed.
    public static func pemFiles(trustRoots: String) throws(IntercomError) -> TLSOptions {
        let roots = try Self.loading("trust roots", trustRoots) { try NIOSSLCertificate.fromPEMFile(trustRoots) }
        return try TLSOptions(chain: [], key: nil, roots: roots)
    }

    /// Takes the certificates of the authorities this side trusts as PEM text,
    /// for a client that presents no certificate of its own.
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` if the text does not parse.
    public static func pem(trustRoots: String) throws(IntercomError) -> TLSOptions {
        let roots = try Self.loading("trust roots", "PEM text") { try NIOSSLCertificate.fromPEMBytes(Array(trustRoots.utf8)) }
        return try TLSOptions(chain: [], key: nil, roots: roots)
    }

    private init(chain: [NIOSSLCertificate], key: NIOSSLPrivateKey?, roots: [NIOSSLCertificate]) throws(IntercomError) {
        guard key == nil || !chain.isEmpty else { throw IntercomError(.invalidConfiguration, "the certificate chain holds no certificate") }
        guard !roots.isEmpty else { throw IntercomError(.invalidConfiguration, "the trust roots hold no certificate") }
        self.certificateChain = chain
        self.privateKey = key
        self.roots = roots
        do {
            self.rootCertificates = try roots.map { try X509.Certificate(derEncoded: $0.toDERBytes()) }
        } catch {
            throw IntercomError(.invalidConfiguration, "a trust root does not parse as an X.509 certificate: \(error)", cause: error)
        }
    }

    private static func loading<T>(_ what: String, _ source: String, _ load: () throws -> T) throws(IntercomError) -> T {
        do {
            return try load()
        } catch {
            throw IntercomError(.invalidConfiguration, "could not read the TLS \(what) from \(source): \(error)", cause: error)
        }
    }

    /// NIO's configuration for one side of a connection.
    func nioConfiguration(server: Bool) -> TLSConfiguration {
        var configuration: TLSConfiguration
        if server, let key = self.privateKey {
            configuration = .makeServerConfiguration(
                certificateChain: self.certificateChain.map { .certificate($0) }, privateKey: .privateKey(key))
            configuration.certificateVerification = self.requiresClientCertificate ? .noHostnameVerification : .none
        } else {
            configuration = .makeClientConfiguration()
            configuration.certificateChain = self.certificateChain.map { .certificate($0) }
            configuration.privateKey = self.privateKey.map { .privateKey($0) }
            configuration.certificateVerification = self.verifiesServerName ? .fullVerification : .noHostnameVerification
        }
        configuration.trustRoots = .certificates(self.roots)
        configuration.minimumTLSVersion = self.minimumVersion.nio
        return configuration
    }

    /// A context for one side (expensive: made once per listener or connect).
    func makeContext(server: Bool) throws(IntercomError) -> NIOSSLContext {
        if server, self.privateKey == nil {
            throw IntercomError(.invalidConfiguration, "a TLS listener needs a certificate and its private key; these options hold only trust roots")
        }
        do {
            return try NIOSSLContext(configuration: self.nioConfiguration(server: server))
        } catch {
            throw IntercomError(
                .invalidConfiguration, "the TLS settings are not usable (does the private key match the certificate?): \(error)",
                cause: error)
        }
    }
}
