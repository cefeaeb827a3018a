@_spi(IntercomInternals) internal import IntercomTransport
internal import NIOCore
internal import NIOSSL
internal import X509
internal import SwiftASN1
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif

/// What was proven about the other side of a network connection, for its ``PeerIdentity``.
struct NetworkIdentity: Sendable {
    var certificate: PeerIdentity.Certificate?
    var address: String?
}

/// One network connection's security facts, shared by its TLS verification
/// callback, its ``TLSGate`` and whoever waits for the connection: the verified
/// certificate of the other side, and — when TLS failed — why, in words a user
/// can act on (the TLS library's own errors name an alert, not a cause).
final class NetworkSession: Sendable {
    private struct State {
        var identity = NetworkIdentity()
        var failure: IntercomError?
        var presented: PeerIdentity.Certificate?
    }
    private let state = Locked(State())
    /// Whose certificate this side checks: "server" on a client, "client" on a server.
    let otherRole: String
    private let roots: [X509.Certificate]

    init(otherRole: String, roots: [X509.Certificate], address: String?) {
        self.otherRole = otherRole
        self.roots = roots
        self.state.withLock { $0.identity.address = address }
    }

    var identity: NetworkIdentity { self.state.withLock { $0.identity } }

    /// The first failure recorded (later ones are consequences of it).
    var failure: IntercomError? { self.state.withLock { $0.failure } }

    func record(_ failure: IntercomError) {
        self.state.withLock { state in
            if state.failure == nil { state.failure = failure }
        }
    }

    /// The TLS library's custom verification: checks the chain the other side
    /// presented with swift-certificates' RFC 5280 verifier (dates, signatures up
    /// to one of this side's roots, CA constraints) and records either the
    /// verified identity or the cause of the refusal. Host names are checked
    /// afterwards by swift-nio-ssl itself.
    func verify(_ presented: [NIOSSLCertificate], promise: EventLoopPromise<NIOSSLVerificationResult>) {
        promise.completeWithTask {
            let result = await self.check(presented)
            return result
        }
    }

    private func check(_ presented: [NIOSSLCertificate]) async -> NIOSSLVerificationResult {
        let chain: [X509.Certificate]
        do {
            chain = try presented.map { try X509.Certificate(derEncoded: $0.toDERBytes()) }
        } catch {
            self.refuse("the \(self.otherRole)'s certificate does not parse: \(error)")
            return .failed
        }
        guard let leaf = chain.first else {
            self.refuse("the \(self.otherRole) presented no certificate")
            return .failed
        }
        let described = Self.describe(leaf)
        self.state.withLock { $0.presented = described }
        let now = Date()
        if leaf.notValidAfter < now {
            self.refuse("the \(self.otherRole)'s certificate (\(described)) expired on \(leaf.notValidAfter)")
            return .failed
        }
        if leaf.notValidBefore > now {
            self.refuse("the \(self.otherRole)'s certificate (\(described)) is not valid before \(leaf.notValidBefore)")
            return .failed
        }
        var verifier = Verifier(rootCertificates: CertificateStore(self.roots)) { RFC5280Policy() }
        switch await verifier.validate(leaf: leaf, intermediates: CertificateStore(chain.dropFirst())) {
        case .validCertificate:
            self.state.withLock { $0.identity.certificate = described }
            return .certificateVerified
        case .couldNotValidate(let failures):
            let why = failures.first.map { " (\($0.policyFailureReason))" } ?? ""
            self.refuse(
                "the \(self.otherRole)'s certificate (\(described)) is not issued by an authority this side trusts — issuer \(leaf.issuer)\(why)")
            return .failed
        }
    }

    private func refuse(_ message: String) {
        self.record(IntercomError(.authenticationFailed, message))
    }

    /// Records a failure the TLS library reported on this connection, in words
    /// that name the cause (unless this side's own verdict came first).
    func recordTLSError(_ error: any Error) {
        self.record(self.explain(error))
    }

    private func explain(_ error: any Error) -> IntercomError {
        if let hostname = error as? NIOSSLExtraError, hostname == .failedToValidateHostname {
            let names = self.state.withLock { $0.presented.map { " (it names \($0))" } ?? "" }
            return IntercomError(
                .authenticationFailed,
                "the server's certificate is not valid for the host name it was reached by\(names); connect by a name it holds, or set tls.serverName",
                cause: error)
        }
        let text = "\(error)"
        if text.contains("CERTIFICATE_REQUIRED") || text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
            return IntercomError(
                .authenticationFailed, "the server requires a client certificate and this side presented none", cause: error)
        }
        if text.contains("ALERT") {
            return IntercomError(
                .authenticationFailed,
                "the \(self.otherRole) rejected this side's certificate (expired, or from an authority it does not trust; its log names the cause): \(text)",
                cause: error)
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") {
            return IntercomError(.connectionFailed, "the other side does not speak TLS (a plain tcp:// endpoint?)", cause: error)
        }
        return IntercomError(.authenticationFailed, "the TLS handshake failed: \(text)", cause: error)
    }

    /// The identity a verified certificate states.
    static func describe(_ certificate: X509.Certificate) -> PeerIdentity.Certificate {
        var commonName: String?
        for relative in certificate.subject {
            for attribute in relative where attribute.type == .RDNAttributeType.commonName {
                commonName = String(describing: attribute.value)
            }
        }
        var alternatives: [String] = []
        if let names = try? certificate.extensions.subjectAlternativeNames {
            for name in names {
                switch name {
                case .dnsName(let dns): alternatives.append("DNS:\(dns)")
                case .ipAddress(let octets): alternatives.append("IP:\(Self.ipAddress(Array(octets.bytes)))")
                case .rfc822Name(let email): alternatives.append("email:\(email)")
                case .uniformResourceIdentifier(let uri): alternatives.append("URI:\(uri)")
                default: continue
                }
            }
        }
        return PeerIdentity.Certificate(
            subject: certificate.subject.description, commonName: commonName, subjectAlternativeNames: alternatives,
            issuer: certificate.issuer.description)
    }

    private static func ipAddress(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        guard bytes.count == 16 else { return bytes.map { String($0, radix: 16) }.joined(separator: ":") }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }
}
