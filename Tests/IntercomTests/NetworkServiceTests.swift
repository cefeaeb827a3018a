import Foundation
import Intercom
import IntercomTestSupport
import IntercomTesting
import Testing

/// Services reached by address: a lasting handle that reconnects when the
/// remote restarts, and a bus service that also listens on a TLS address.
@Suite("Across hosts: services by address")
struct NetworkServiceTests {
    @Test func aHandleToAnAddressReconnectsAfterTheRemoteRestarts() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("pid") { (_: Int, _: CallContext) -> Int in 1 }
            var serverConfiguration = Peer.Configuration(name: "remote")
            serverConfiguration.tls = try TestCertificateAuthority.shared.options(commonName: "remote")
            let first = try await PeerListener.listen(
                on: .tls(host: "127.0.0.1", port: 0), router: router, configuration: serverConfiguration)
            let address = first.endpoint
            var configuration = Peer.Configuration(name: "client")
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "client")
            let handle = ServiceHandle(connectingTo: address, configuration: configuration)
            var states = handle.states.makeAsyncIterator()
            #expect(try await handle.call("pid", 0, returning: Int.self) == 1)
            #expect(await states.next() == .connecting)
            #expect(await states.next().map { if case .connected = $0 { true } else { false } } == true)
            await first.close()  // the remote goes away
            #expect(await states.next().map { if case .lost = $0 { true } else { false } } == true)
            // A call made while it is away waits for it (within its deadline)…
            let waiting = Task { try await handle.call("pid", 0, returning: Int.self, timeout: .seconds(30)) }
            #expect(await states.next() == .connecting)
            // …and reaches the new instance on the same address.
            let second = try await PeerListener.listen(on: address, router: router, configuration: serverConfiguration)
            #expect(try await waiting.value == 1)
            #expect(await states.next().map { if case .reconnected = $0 { true } else { false } } == true)
            await handle.close()
            await second.close()
        }
    }

    @Test func aBusServiceServesItsNameLocallyAndAnAddressRemotely() async throws {
        try await withTemporaryBus { temporary in
            try await withResourceCheck {
                let router = Router()
                try router.register("who") { (_: Int, context: CallContext) -> String in
                    context.remote.certificate?.commonName ?? "uid \(context.remote.credentials?.uid ?? 0)"
                }
                var configuration = Peer.Configuration(name: "camera")
                configuration.tls = try TestCertificateAuthority.shared.options(commonName: "camera")
                let service = try await temporary.bus.serve(
                    "camera", router: router, configuration: configuration, addresses: [.tls(host: "127.0.0.1", port: 0)],
                    networkAccess: AccessPolicy(certificateNames: ["analysis"]))
                let address = try #require(service.addresses.first)
                #expect(address.port != 0)
                #expect(service.info.addresses == [address.description])
                let local = try await temporary.bus.connect(to: "camera")
                #expect(try await local.call("who", 0, returning: String.self) == "uid \(getuid())")
                var remoteConfiguration = Peer.Configuration(name: "analysis")
                remoteConfiguration.tls = try TestCertificateAuthority.shared.options(commonName: "analysis")
                let remote = try await Peer.connect(to: address, configuration: remoteConfiguration)
                #expect(try await remote.call("who", 0, returning: String.self) == "analysis")
                let info = try await remote.call("intercom.info", 0, returning: ServiceInfo.self)
                #expect(info.addresses == [address.description])
                #expect(service.connectedClients.count == 2)
                // Watching the traffic (`intercom monitor`) is for local processes only.
                await expectIntercomError(.permissionDenied) {
                    for try await _ in remote.stream("intercom.monitor", MonitorRequest(payloadBytes: 0), of: TrafficBatch.self) {}
                }
                var watching = local.stream("intercom.monitor", MonitorRequest(payloadBytes: 0), of: TrafficBatch.self).makeAsyncIterator()
                #expect(try await watching.next()?.connections == 1, "the local monitor is attached; the remote client counts, it does not")
                await remote.close()
                await local.close()
                await service.close()
            }
        }
    }
}
