public import Foundation
public import Intercom
import Crypto
import SwiftASN1
import X509

/// A certificate authority made in this process (swift-certificates and
/// swift-crypto; no external tools), and the certificates it issues — good,
/// expired, for another host — as PEM text or files for ``TLSOptions``: for
/// tests and benchmarks of TLS connections, never for production.
///
/// ```swift
/// let authority = try TestCertificateAuthority()
/// serverConfiguration.tls = try authority.options(commonName: "camera")
/// clientConfiguration.tls = try authority.options(commonName: "analysis")
/// ```
public struct TestCertificateAuthority: Sendable {
    private let key: Certificate.PrivateKey
    private let certificate: Certificate
    private let name: DistinguishedName

    /// One authority for the whole process (a test run).
    public static let shared: TestCertificateAuthority = {
        do { return try TestCertificateAuthority() } catch { fatalError("cannot make the test certificate authority: \(error)") }
    }()

    /// A new authority named `name`, valid from an hour ago for a day.
    public init(name: String = "Intercom Test CA") throws {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let now = Date()
        self.key = .init(key)
        self.name = subject
        self.certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3600, notValidAfter: now + 86_400, issuer: subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(key))
    }

    /// The authority's certificate, in PEM (what peers trust).
    public var trustPEM: String {
        get throws { try self.certificate.serializeAsPEM().pemString }
    }

    /// A certificate for `commonName`, naming `dnsNames` and `ipAddresses`,
    /// valid over `validity` (default: from an hour ago for a day), with its key.
    public func issue(
        commonName: String, dnsNames: [String] = ["localhost"], ipAddresses: [[UInt8]] = [[127, 0, 0, 1]],
        validity: ClosedRange<Date>? = nil
    ) throws -> (certificatePEM: String, keyPEM: String) {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let validity = validity ?? (now - 3600)...(now + 86_400)
        let names = dnsNames.map { GeneralName.dnsName($0) } + ipAddresses.map { GeneralName.ipAddress(ASN1OctetString(contentBytes: $0[...])) }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: validity.lowerBound, notValidAfter: validity.upperBound, issuer: self.name,
            subject: try DistinguishedName { CommonName(commonName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(names)
            },
            issuerPrivateKey: self.key)
        return (try certificate.serializeAsPEM().pemString, key.pemRepresentation)
    }

    /// ``TLSOptions`` holding a certificate this authority issues for `commonName`
    /// (see ``issue(commonName:dnsNames:ipAddresses:validity:)``), trusting `trusting` (this authority by default).
    public func options(
        commonName: String, dnsNames: [String] = ["localhost"], ipAddresses: [[UInt8]] = [[127, 0, 0, 1]],
        validity: ClosedRange<Date>? = nil, trusting: TestCertificateAuthority? = nil
    ) throws -> TLSOptions {
        let issued = try self.issue(commonName: commonName, dnsNames: dnsNames, ipAddresses: ipAddresses, validity: validity)
        return try TLSOptions.pem(
            certificate: issued.certificatePEM, privateKey: issued.keyPEM, trustRoots: try (trusting ?? self).trustPEM)
    }

    /// Writes a certificate for `commonName`, its key and this authority's
    /// certificate into `directory`; returns the three paths.
    public func writeFiles(commonName: String, into directory: String) throws -> (certificate: String, key: String, ca: String) {
        let issued = try self.issue(commonName: commonName)
        let paths = (certificate: "\(directory)/\(commonName).pem", key: "\(directory)/\(commonName).key", ca: "\(directory)/ca.pem")
        try issued.certificatePEM.write(toFile: paths.certificate, atomically: true, encoding: .utf8)
        try issued.keyPEM.write(toFile: paths.key, atomically: true, encoding: .utf8)
        try self.trustPEM.write(toFile: paths.ca, atomically: true, encoding: .utf8)
        return paths
    }
}
