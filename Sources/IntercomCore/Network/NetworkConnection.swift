@_spi(IntercomInternals) public import IntercomTransport
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import NIOPosix
internal import NIOSSL
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Setting up the channel of a TCP or TLS connection, on either side.
enum NetworkPipeline {
    /// Adds the TLS handler and its gate (for `tls`), then the frame transport
    /// and the handshake.
    ///
    /// - Parameters:
    ///   - tls: the side's TLS context, and the server name a client verifies (nil for plain TCP).
    ///   - admit: on a listener, the access policy's verdict on a verified client.
    static func install(
        on channel: any Channel, tls: (context: NIOSSLContext, serverName: String?, server: Bool)?, session: NetworkSession,
        admit: (@Sendable (PeerIdentity) -> String?)?, router: Router?, configuration: Peer.Configuration
    ) throws -> EventLoopFuture<Peer> {
        Self.setKeepalive(on: channel)
        // Reads of up to 128 KiB (NIO's default stops at 64 KiB): a large frame
        // over TCP arrives in fewer reads, each a pass through the TLS handler.
        _ = channel.setOption(
            ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 128 << 10))
        if let tls {
            let verify: NIOSSLCustomVerificationCallback = { certificates, promise in session.verify(certificates, promise: promise) }
            let handler: any ChannelHandler =
                tls.server
                ? NIOSSLServerHandler(context: tls.context, customVerificationCallback: verify)
                : try NIOSSLClientHandler(context: tls.context, serverHostname: tls.serverName, customVerificationCallback: verify)
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.pipeline.syncOperations.addHandler(
                TLSGate(session: session, timeout: configuration.handshakeTimeout, logger: configuration.serviceLogger, admit: admit))
        }
        return try installPeer(
            on: channel, descriptor: nil, medium: tls == nil ? .tcp : .tls, network: session, router: router,
            configuration: configuration)
    }

    /// TCP keepalive as a backstop for connections whose heartbeats are off:
    /// the kernel probes after 30 s of silence, every 10 s, and gives up after 3.
    private static func setKeepalive(on channel: any Channel) {
        guard let provider = channel as? any SocketOptionProvider else { return }
        _ = provider.unsafeSetSocketOption(level: .socket, name: .so_keepalive, value: Int32(1))
        #if os(Linux)
        let tcp = NIOBSDSocket.OptionLevel(rawValue: Int32(IPPROTO_TCP))
        _ = provider.unsafeSetSocketOption(level: tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPIDLE), value: Int32(30))
        _ = provider.unsafeSetSocketOption(level: tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPINTVL), value: Int32(10))
        _ = provider.unsafeSetSocketOption(level: tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPCNT), value: Int32(3))
        #endif
    }

    /// `tcp://10.0.0.7:50112`: the other side's address as a handler sees it.
    static func describe(_ address: SocketAddress?, tls: Bool) -> String? {
        guard let address, let ip = address.ipAddress, let port = address.port else { return nil }
        return tls ? Endpoint.tls(host: ip, port: port).description : Endpoint.tcp(host: ip, port: port).description
    }

    /// Whether `host` is an IP address literal (TLS sends no server name for those
    /// and checks the certificate's IP addresses instead).
    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}

extension Peer {
    /// Connects to an endpoint: a Unix socket on this host, or a host over TLS
    /// (or plain TCP, when ``Configuration/allowsPlainTCP`` allows it).
    ///
    /// Over TLS this side verifies the server's certificate against
    /// ``Configuration/tls``'s trust roots and the host name (or
    /// ``TLSOptions/serverName``), presents its own, and sends its first
    /// Intercom byte only after all of that succeeded.
    ///
    /// - Throws: ``IntercomError`` `invalidConfiguration` (a `tls://` endpoint with
    ///   no ``Configuration/tls``, a `tcp://` one without ``Configuration/allowsPlainTCP``),
    ///   `authenticationFailed` (a certificate expired, untrusted, for another host,
    ///   missing — the message names which, and whose), `permissionDenied` (the
    ///   server's access policy refused this client), `connectionFailed`, `timeout`.
    public static func connect(
        to endpoint: Endpoint, router: Router? = nil, configuration: Configuration = Configuration()
    ) async throws(IntercomError) -> Peer {
        let what = "connecting to \(endpoint)"
        var tls: (context: NIOSSLContext, serverName: String?, server: Bool)?
        switch endpoint.scheme {
        case .unix:
            return try await Self.connect(unixPath: endpoint.path, router: router, configuration: configuration)
        case .tls:
            guard let options = configuration.tls else {
                throw IntercomError(.invalidConfiguration, "\(what): TLS is not configured (set configuration.tls)")
            }
            let name = options.serverName ?? endpoint.host
            tls = (try options.makeContext(server: false), NetworkPipeline.isIPAddress(name) ? nil : name, false)
        default:
            guard configuration.allowsPlainTCP else {
                throw IntercomError(
                    .invalidConfiguration,
                    "\(what): plain TCP is neither encrypted nor authenticated, so it is off unless configuration.allowsPlainTCP is set; use tls:// across hosts")
            }
        }
        let session = NetworkSession(otherRole: "server", roots: configuration.tls?.rootCertificates ?? [], address: endpoint.description)
        let box = FutureBox()
        let bootstrap = ClientBootstrap(group: intercomEventLoopGroup)
            .channelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
            .connectTimeout(.nanoseconds(configuration.handshakeTimeout.nanosecondsClamped))
            .channelInitializer { [tls] channel in
                do {
                    box.future = try NetworkPipeline.install(
                        on: channel, tls: tls, session: session, admit: nil, router: router, configuration: configuration)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        do {
            _ = try await bootstrap.connect(host: endpoint.host, port: endpoint.port).get()
        } catch {
            throw IntercomError(systemError: error, doing: what)
        }
        guard let future = box.future else { throw IntercomError(.connectionFailed, "\(what): the channel did not initialise") }
        do {
            return try await future.get()
        } catch {
            if var failure = session.failure {
                failure.message = "\(what): \(failure.message)"
                throw failure
            }
            if let error = error as? IntercomError { throw error }
            throw IntercomError(systemError: error, doing: what)
        }
    }
}
