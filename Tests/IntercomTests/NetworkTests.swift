import Foundation
import Intercom
import IntercomTestSupport
import IntercomTesting
import Synchronization
import Testing

/// TCP and TLS: addresses, mutual authentication and each way it fails, the
/// access policy, plain TCP's explicit opt-in, and heartbeats across a cut path.
/// (The RPC suite itself also runs over `tcp` and `tls`: see ``TransportKind``.)
@Suite("Across hosts: TCP and TLS")
struct NetworkTests {
    @Test func endpointsParseTheirWrittenFormsAndRejectOthers() throws {
        #expect(Endpoint("tls://camera.lab:7411") == .tls(host: "camera.lab", port: 7411))
        #expect(Endpoint("tcp://127.0.0.1:0") == .tcp(host: "127.0.0.1", port: 0))
        #expect(Endpoint("tls://[::1]:7411")?.host == "::1")
        #expect(Endpoint("tls://[::1]:7411")?.description == "tls://[::1]:7411")
        #expect(Endpoint("unix:///run/x.sock") == .unix(path: "/run/x.sock"))
        #expect(Endpoint("/run/x.sock") == .unix(path: "/run/x.sock"))
        for bad in ["camera", "tls://camera", "tls://camera:99999", "tls://::1:80", "http://a:1", "tcp://:80", "unix://relative"] {
            #expect(Endpoint(bad) == nil, "\(bad)")
        }
        let error = #expect(throws: IntercomError.self) { try Endpoint(parsing: "camera:80") }
        #expect(error?.code == .invalidName)
    }

    @Test func mutualTLSShowsEachSideTheOthersVerifiedCertificate() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("who") { (_: Int, context: CallContext) -> [String] in
                [context.remote.certificate?.commonName ?? "-", context.remote.address ?? "-"]
            }
            let server = try await Self.listen(router: router, tls: TestCertificateAuthority.shared.options(commonName: "camera-server"))
            var configuration = Peer.Configuration(name: "client")
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "analysis-client", dnsNames: ["analysis.lab"])
            let peer = try await Peer.connect(to: server.endpoint, configuration: configuration)
            let seen = try await peer.call("who", 0, returning: [String].self)
            #expect(seen[0] == "analysis-client")
            #expect(seen[1].hasPrefix("tls://127.0.0.1:"))
            #expect(peer.remote.certificate?.commonName == "camera-server")
            #expect(peer.remote.certificate?.subjectAlternativeNames.contains("IP:127.0.0.1") == true)
            #expect(peer.remote.isAuthenticated)
            #expect(peer.remote.credentials == nil)
            await peer.close()
            await server.close()
        }
    }

    /// Each way TLS authentication fails, with what the connecting user reads.
    enum Failure: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case serverFromUntrustedAuthority, expiredServerCertificate, serverCertificateForAnotherHost
        case missingClientCertificate, clientFromUntrustedAuthority, expiredClientCertificate
        var testDescription: String { self.rawValue }
    }

    @Test(arguments: Failure.allCases)
    func tlsFailureNamesItsCauseAndReachesNoHandler(_ failure: Failure) async throws {
        try await withResourceCheck {
            let handled = Atomic<Int>(0)
            let router = Router()
            try router.register("touch") { (_: Int, _: CallContext) -> Int in handled.add(1, ordering: .relaxed).newValue }
            let pki = TestCertificateAuthority.shared
            let stranger = try TestCertificateAuthority(name: "Someone Else's CA")
            let past = Date() - 86_400 * 30...Date() - 86_400
            let serverTLS: TLSOptions
            switch failure {
            case .serverFromUntrustedAuthority: serverTLS = try stranger.options(commonName: "server", trusting: pki)
            case .expiredServerCertificate: serverTLS = try pki.options(commonName: "server", validity: past)
            case .serverCertificateForAnotherHost:
                serverTLS = try pki.options(commonName: "server", dnsNames: ["elsewhere.example"], ipAddresses: [])
            default: serverTLS = try pki.options(commonName: "server")
            }
            var configuration = Peer.Configuration(name: "client")
            switch failure {
            case .missingClientCertificate: configuration.tls = try TLSOptions.pem(trustRoots: pki.trustPEM)
            case .clientFromUntrustedAuthority: configuration.tls = try stranger.options(commonName: "client", trusting: pki)
            case .expiredClientCertificate: configuration.tls = try pki.options(commonName: "client", validity: past)
            default: configuration.tls = try pki.options(commonName: "client")
            }
            let server = try await Self.listen(router: router, tls: serverTLS)
            let error = await expectIntercomError(.authenticationFailed) {
                let peer = try await Peer.connect(to: server.endpoint, configuration: configuration)
                _ = try? await peer.call("touch", 0, returning: Int.self, timeout: .seconds(5))
                await peer.close()
            }
            let expected: String
            switch failure {
            case .serverFromUntrustedAuthority: expected = "is not issued by an authority this side trusts — issuer CN=Someone Else's CA"
            case .expiredServerCertificate: expected = "the server's certificate (CN=server [DNS:localhost, IP:127.0.0.1]) expired on"
            case .serverCertificateForAnotherHost: expected = "not valid for the host name it was reached by (it names CN=server [DNS:elsewhere.example])"
            case .missingClientCertificate: expected = "the server requires a client certificate and this side presented none"
            case .clientFromUntrustedAuthority, .expiredClientCertificate: expected = "the server rejected this side's certificate"
            }
            #expect(error?.message.contains(expected) == true, "\(error?.message ?? "no error")")
            #expect(error?.message.hasPrefix("connecting to \(server.endpoint)") == true)
            #expect(handled.load(ordering: .relaxed) == 0)
            #expect(server.connectedPeers.isEmpty)
            await server.close()
        }
    }

    @Test func accessPolicyRefusesAVerifiedCertificateItDoesNotNameBeforeAnyHandler() async throws {
        try await withResourceCheck {
            let handled = Atomic<Int>(0)
            let router = Router()
            try router.register("touch") { (_: Int, _: CallContext) -> Int in handled.add(1, ordering: .relaxed).newValue }
            let server = try await Self.listen(
                router: router, tls: TestCertificateAuthority.shared.options(commonName: "server"),
                access: AccessPolicy(certificateNames: ["analysis.lab"]))
            var configuration = Peer.Configuration(name: "client")
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "camera", dnsNames: ["camera.lab"])
            let error = await expectIntercomError(.permissionDenied) {
                let peer = try await Peer.connect(to: server.endpoint, configuration: configuration)
                await peer.close()
            }
            #expect(error?.message.contains("holds none of the allowed names (analysis.lab)") == true, "\(error?.message ?? "")")
            // The name it does allow gets in.
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "analysis", dnsNames: ["analysis.lab"])
            let peer = try await Peer.connect(to: server.endpoint, configuration: configuration)
            #expect(try await peer.call("touch", 0, returning: Int.self) == 1)
            await peer.close()
            await server.close()
        }
    }

    @Test func plainTCPIsRefusedOnBothSidesUnlessExplicitlyAllowed() async throws {
        try await withResourceCheck {
            let refusedListen = await expectIntercomError(.invalidConfiguration) {
                _ = try await PeerListener.listen(on: .tcp(host: "127.0.0.1", port: 0))
            }
            #expect(refusedListen?.message.contains("plain TCP authenticates nobody") == true)
            let router = Router()
            try router.register("who") { (_: Int, context: CallContext) -> Bool in context.remote.isAuthenticated }
            let server = try await PeerListener.listen(
                on: .tcp(host: "127.0.0.1", port: 0), router: router, access: AccessPolicy(allowsUnauthenticated: true))
            let refusedConnect = await expectIntercomError(.invalidConfiguration) {
                _ = try await Peer.connect(to: server.endpoint)
            }
            #expect(refusedConnect?.message.contains("allowsPlainTCP") == true)
            var configuration = Peer.Configuration()
            configuration.allowsPlainTCP = true
            let peer = try await Peer.connect(to: server.endpoint, configuration: configuration)
            #expect(try await peer.call("who", 0, returning: Bool.self) == false)
            await peer.close()
            await server.close()
            // TLS without TLS settings says so.
            let noTLS = await expectIntercomError(.invalidConfiguration) {
                _ = try await Peer.connect(to: .tls(host: "127.0.0.1", port: 1))
            }
            #expect(noTLS?.message.contains("configuration.tls") == true)
        }
    }

    /// A path that silently stops carrying packets: only heartbeats can tell.
    @Test(arguments: [false, true])
    func aVanishedRemoteIsDetectedByHeartbeatsAndPendingCallsFail(tls: Bool) async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("echo") { (value: Int, _: CallContext) -> Int in value }
            var serverConfiguration = Peer.Configuration(name: "server")
            serverConfiguration.heartbeat = .off  // only the client watches
            if tls { serverConfiguration.tls = try TestCertificateAuthority.shared.options(commonName: "server") }
            let server = try await PeerListener.listen(
                on: tls ? .tls(host: "127.0.0.1", port: 0) : .tcp(host: "127.0.0.1", port: 0), router: router,
                configuration: serverConfiguration, access: AccessPolicy(allowsUnauthenticated: !tls))
            let proxy = try await StallingProxy.start(upstreamPort: server.endpoint.port)
            var configuration = Peer.Configuration(name: "client")
            configuration.allowsPlainTCP = true
            configuration.heartbeat = .network(every: .milliseconds(100), lostAfter: .milliseconds(500))
            if tls { configuration.tls = try TestCertificateAuthority.shared.options(commonName: "client") }
            let address: Endpoint = tls ? .tls(host: "127.0.0.1", port: proxy.endpointPort) : .tcp(host: "127.0.0.1", port: proxy.endpointPort)
            let peer = try await Peer.connect(to: address, configuration: configuration)
            #expect(try await peer.call("echo", 7, returning: Int.self) == 7)
            proxy.stall()
            // The call's own deadline is a minute away: only the heartbeat can end it sooner.
            let error = await expectIntercomError(.peerLost) {
                _ = try await peer.call("echo", 8, returning: Int.self, timeout: .seconds(60))
            }
            #expect(error?.message.contains("no sign of life from 'server'") == true, "\(error?.message ?? "")")
            await peer.waitUntilClosed()
            await proxy.close()
            await server.close()
        }
    }

    private static func listen(router: Router, tls: TLSOptions, access: AccessPolicy = AccessPolicy()) async throws -> PeerListener {
        var configuration = Peer.Configuration(name: "server")
        configuration.tls = tls
        return try await PeerListener.listen(
            on: .tls(host: "127.0.0.1", port: 0), router: router, configuration: configuration, access: access)
    }
}
