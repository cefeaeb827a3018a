import ArgumentParser
import Foundation
import Intercom

/// `--bus NAME` and the TLS files, shared by every command that talks to a
/// service: a service is named on the bus, or given by address
/// (`tls://HOST:PORT`, `tcp://HOST:PORT`, a socket path).
struct BusOptions: ParsableArguments {
    @Option(help: "The bus to use (default: default). INTERCOM_BUS_DIR, if set, names its directory instead.")
    var bus: String = "default"
    @Option(name: .customLong("tls-cert"), help: "PEM file of this side's certificate (chain), for tls:// addresses.")
    var tlsCertificate: String?
    @Option(name: .customLong("tls-key"), help: "PEM file of the certificate's private key.")
    var tlsKey: String?
    @Option(name: .customLong("tls-ca"), help: "PEM file of the certificate authorities to trust.")
    var tlsCA: String?
    @Flag(help: "Allow tcp:// addresses: plain TCP, neither encrypted nor authenticated.")
    var allowPlainTCP = false
    @Option(help: "JSON file of services to start when asked for and absent: {\"NAME\": {\"executable\": \"/path\", \"arguments\": [...]}}. INTERCOM_ACTIVATIONS, if set, names one too.")
    var activations: String?

    func validate() throws {
        let given = [self.tlsCertificate, self.tlsKey, self.tlsCA].compactMap { $0 }.count
        if given > 0, self.tlsCA == nil {
            throw ValidationError("--tls-cert and --tls-key need --tls-ca (the authorities to trust)")
        }
        if (self.tlsCertificate == nil) != (self.tlsKey == nil) {
            throw ValidationError("--tls-cert and --tls-key go together")
        }
    }

    func resolve() throws(IntercomError) -> Bus {
        var bus = try Bus(self.bus)
        if let file = self.activations ?? ProcessInfo.processInfo.environment["INTERCOM_ACTIVATIONS"] {
            try bus.loadActivations(fromFile: file)
        }
        return bus
    }

    /// A configuration with the TLS files and the plain-TCP permission given.
    func configuration() throws(IntercomError) -> Peer.Configuration {
        var configuration = Peer.Configuration()
        configuration.allowsPlainTCP = self.allowPlainTCP
        if let ca = self.tlsCA {
            if let certificate = self.tlsCertificate, let key = self.tlsKey {
                configuration.tls = try TLSOptions.pemFiles(certificate: certificate, privateKey: key, trustRoots: ca)
            } else {
                configuration.tls = try TLSOptions.pemFiles(trustRoots: ca)
            }
        }
        return configuration
    }

    /// Connects to `target`: an address directly, anything else as a name on the bus.
    func connect(to target: String, configuration: Peer.Configuration) async throws(IntercomError) -> Peer {
        if let endpoint = Endpoint(target) { return try await Peer.connect(to: endpoint, configuration: configuration) }
        return try await self.resolve().connect(to: target, configuration: configuration)
    }

    /// What the service at `address` says about itself (`intercom.info`).
    func info(at address: String) async throws -> ServiceInfo {
        _ = try Endpoint(parsing: address)  // an address, not a name: say so if it is not one
        return try await self.withPeer(address) { try await $0.call("intercom.info", 0, returning: ServiceInfo.self, timeout: .seconds(10)) }
    }

    /// Runs `body` with a connection to `target` (see ``connect(to:configuration:)``), closed after it.
    func withPeer<T>(_ target: String, _ body: (Peer) async throws -> T) async throws -> T {
        let peer = try await self.connect(to: target, configuration: self.configuration())
        do {
            let result = try await body(peer)
            await peer.close()
            return result
        } catch {
            await peer.close()
            throw error
        }
    }
}
