@_spi(IntercomInternals) public import IntercomTransport
internal import Logging
internal import NIOCore
internal import NIOPosix
internal import NIOSSL
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

extension PeerListener {
    /// Starts listening on an endpoint: a Unix socket path, or an address over
    /// TLS (or plain TCP, when `access` allows unauthenticated clients).
    ///
    /// Over TLS every client completes the TLS handshake — presenting a
    /// certificate from one of ``Peer/Configuration/tls``'s authorities, unless
    /// ``TLSOptions/requiresClientCertificate`` is off — and passes `access`
    /// before the Intercom handshake starts, so a refused client never reaches a
    /// handler; it is told why in an error frame. Port 0 takes any free port:
    /// ``endpoint`` says which.
    ///
    /// ```swift
    /// let listener = try await PeerListener.listen(on: try Endpoint(parsing: "tls://0.0.0.0:7411"), router: router, configuration: configuration)
    /// ```
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` (a `tls://` endpoint with no
    ///   ``Peer/Configuration/tls``; a `tcp://` one whose policy does not set
    ///   ``AccessPolicy/allowsUnauthenticated``), `nameInUse` (the address is taken),
    ///   `connectionFailed` (other failures to bind).
    public static func listen(
        on endpoint: Endpoint, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration(),
        access: AccessPolicy = AccessPolicy()
    ) async throws(IntercomError) -> PeerListener {
        var tls: NIOSSLContext?
        switch endpoint.scheme {
        case .unix:
            return try await Self.listen(unixPath: endpoint.path, router: router, configuration: configuration, access: access)
        case .tls:
            guard let options = configuration.tls else {
                throw IntercomError(.invalidConfiguration, "listening on \(endpoint): TLS is not configured (set configuration.tls)")
            }
            tls = try options.makeContext(server: true)
        default:
            guard access.allowsUnauthenticated else {
                throw IntercomError(
                    .invalidConfiguration,
                    "listening on \(endpoint): plain TCP authenticates nobody, so a tcp:// listener needs an access policy with allowsUnauthenticated; use tls:// across hosts")
            }
        }
        let box = ListenerBox()
        let roots = configuration.tls?.rootCertificates ?? []
        let logger = configuration.serviceLogger
        let bootstrap = ServerBootstrap(group: intercomEventLoopGroup)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
            .childChannelInitializer { [tls] child in
                guard box.track(child) else {
                    return child.eventLoop.makeFailedFuture(IntercomError(.closed, "the listener closed"))
                }
                let address = NetworkPipeline.describe(child.remoteAddress, tls: tls != nil)
                let session = NetworkSession(otherRole: "client", roots: roots, address: address)
                do {
                    let future = try NetworkPipeline.install(
                        on: child, tls: tls.map { ($0, nil, true) }, session: session, admit: { access.refusal(of: $0) },
                        router: router, configuration: configuration)
                    future.whenComplete { result in
                        switch result {
                        case .success(let peer):
                            box.adopt(peer)
                        case .failure(let error):
                            logger.warning(
                                "refused a connection",
                                metadata: ["address": "\(address ?? "?")", "error": "\(session.failure ?? error)"])
                        }
                    }
                    return child.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return child.eventLoop.makeFailedFuture(error)
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: endpoint.host, port: endpoint.port).get()
        } catch {
            if let io = error as? IOError, io.errnoCode == EADDRINUSE {
                throw IntercomError(.nameInUse, "listening on \(endpoint): the address is in use", cause: error)
            }
            throw IntercomError(systemError: error, doing: "listening on \(endpoint)")
        }
        let port = channel.localAddress?.port ?? endpoint.port
        let bound = tls == nil ? Endpoint.tcp(host: endpoint.host, port: port) : Endpoint.tls(host: endpoint.host, port: port)
        let listener = PeerListener(endpoint: bound, acceptor: .network(channel), channels: box)
        box.set(listener)
        listener.publishProperties(of: router)
        return listener
    }
}
