@_spi(IntercomInternals) public import IntercomTransport
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import NIOPosix
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Installs the frame transport and the handshake on a new channel.
///
/// - Returns: the future of the peer, fulfilled when the handshake completes.
/// - Parameter descriptor: the descriptor under the channel, when Intercom knows it
///   (sockets it connected, accepted or adopted); needed to move to shared memory.
/// - Parameter network: for TCP and TLS connections, what TLS proves about the other side.
func installPeer(
    on channel: any Channel, descriptor: Int32?, medium: TransportMedium = .socket, network: NetworkSession? = nil,
    router: Router?, configuration: Peer.Configuration
) throws -> EventLoopFuture<Peer> {
    let transport = NIOFrameTransport(
        channel: channel, descriptor: descriptor, medium: medium, limits: configuration.limits,
        outboxLimit: configuration.outboundHighWatermark, logger: configuration.serviceLogger)
    try channel.pipeline.syncOperations.addHandler(transport.handler)
    let promise = channel.eventLoop.makePromise(of: Peer.self)
    transport.setReceiver(
        Handshake(transport: transport, router: router, configuration: configuration, network: network) { result in
            promise.completeWith(result.mapError { $0 as any Error })
        })
    return promise.futureResult
}

/// The event loops every connection runs on (NIO's shared group).
var intercomEventLoopGroup: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

extension Peer.Configuration {
    var waterMark: ChannelOptions.Types.WriteBufferWaterMark {
        let high = max(self.outboundHighWatermark, 1)
        return .init(low: min(self.outboundLowWatermark, high), high: high)
    }
}

/// Runs a NIO connect and the handshake that follows, mapping failures to ``IntercomError``.
private func establish(
    _ what: String,
    descriptor: Int32?,
    configuration: Peer.Configuration,
    _ connect: (_ initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<any Channel>,
    router: Router?
) async throws(IntercomError) -> Peer {
    let box = FutureBox()
    do {
        _ = try await connect { channel in
            do {
                box.future = try installPeer(on: channel, descriptor: descriptor, router: router, configuration: configuration)
                return channel.eventLoop.makeSucceededVoidFuture()
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    } catch {
        throw IntercomError(systemError: error, doing: what)
    }
    guard let future = box.future else { throw IntercomError(.connectionFailed, "\(what): the channel did not initialise") }
    do {
        return try await future.get()
    } catch let error as IntercomError {
        throw error
    } catch {
        throw IntercomError(systemError: error, doing: what)
    }
}

/// Carries the handshake future out of a channel initializer: written once on
/// the event loop before the connect future completes, read after it. That
/// order is real, but it passes through a continuation resumed inside the
/// uninstrumented Swift runtime, so ThreadSanitizer reported the plain variable
/// this was; the lock (once per connect) makes the order visible to it.
final class FutureBox: Sendable {
    private let stored = Locked<EventLoopFuture<Peer>?>(nil)
    var future: EventLoopFuture<Peer>? {
        get { self.stored.withLock { $0 } }
        set { self.stored.withLock { $0 = newValue } }
    }
}

extension Peer {
    /// Makes two connected peers in this process over an anonymous socket pair
    /// (multiprocessing's `Pipe()`): useful in tests and between tasks.
    ///
    /// To connect to a child process instead, make a ``SocketPair``, give the child
    /// one descriptor and ``adopt(fileDescriptor:router:configuration:)`` the other.
    ///
    /// - Throws: ``IntercomError`` if the socket pair or the handshake fails.
    public static func pair(
        routers: (first: Router?, second: Router?) = (nil, nil),
        configuration: Configuration = Configuration()
    ) async throws(IntercomError) -> (Peer, Peer) {
        let sockets = try SocketPair()
        async let first = Self.adopt(fileDescriptor: sockets.first, router: routers.first, configuration: configuration)
        async let second = Self.adopt(fileDescriptor: sockets.second, router: routers.second, configuration: configuration)
        do {
            return try await (first, second)
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.connectionFailed, "\(error)")
        }
    }

    /// Takes over a connected stream socket this process owns (an inherited
    /// descriptor, one end of a ``SocketPair``). The peer closes it when done.
    ///
    /// - Throws: ``IntercomError`` if `fileDescriptor` is not a usable socket or the handshake fails.
    public static func adopt(
        fileDescriptor: Int32, router: Router? = nil, configuration: Configuration = Configuration()
    ) async throws(IntercomError) -> Peer {
        try await establish("adopting descriptor \(fileDescriptor)", descriptor: fileDescriptor, configuration: configuration, { initializer in
            ClientBootstrap(group: intercomEventLoopGroup)
                .channelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
                .channelInitializer(initializer)
                .withConnectedSocket(fileDescriptor)
        }, router: router)
    }

    /// Talks over this process's standard input and output (for a child whose parent
    /// holds the other end). Anything else printed to standard output corrupts the
    /// stream: log to standard error.
    ///
    /// - Throws: ``IntercomError`` if the descriptors are unusable or the handshake fails.
    public static func standardIO(router: Router? = nil, configuration: Configuration = Configuration()) async throws(IntercomError) -> Peer {
        try await establish("using standard input/output", descriptor: STDIN_FILENO, configuration: configuration, { initializer in
            NIOPipeBootstrap(group: intercomEventLoopGroup)
                .channelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
                .channelInitializer(initializer)
                .takingOwnershipOfDescriptors(input: STDIN_FILENO, output: STDOUT_FILENO)
        }, router: router)
    }

    /// Connects to a ``PeerListener`` on a Unix socket path.
    ///
    /// Before it sends a byte, the client checks who listens there from the
    /// kernel's record of the server process (`SO_PEERCRED`): its uid must be one
    /// of ``Configuration/trustedServerUIDs`` (by default this user's or root's),
    /// so a socket planted by another user never sees the request.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` (nobody listening),
    ///   `permissionDenied` (the server is not trusted, or refused this client),
    ///   `timeout` (no handshake within ``Configuration/handshakeTimeout``), or
    ///   another handshake failure.
    public static func connect(
        unixPath path: String, router: Router? = nil, configuration: Configuration = Configuration()
    ) async throws(IntercomError) -> Peer {
        let fd = try await UnixSocket.connect(to: path, until: .now + configuration.handshakeTimeout)
        if let refusal = UnixSocket.refusal(of: fd, allowed: configuration.trustedServerUIDs, role: "server") {
            POSIX.close(fd)
            throw IntercomError(
                .permissionDenied,
                "refusing to talk to \(path): \(refusal); nothing was sent. If that user is meant to serve it, add its uid to configuration.trustedServerUIDs")
        }
        return try await establish("connecting to \(path)", descriptor: fd, configuration: configuration, { initializer in
            ClientBootstrap(group: intercomEventLoopGroup)
                .channelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
                .channelInitializer(initializer)
                .withConnectedSocket(fd)
        }, router: router)
    }
}
