internal import IntercomWire
internal import Logging
internal import NIOCore
internal import NIOPosix
internal import Synchronization
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Accepts connections on a Unix socket path; every accepted connection that
/// completes the handshake becomes a ``Peer`` served by the listener's router.
///
/// A client that breaks the protocol (wrong magic, unsupported version, oversized
/// frame, …) is told why, disconnected and logged; the listener and its other
/// connections carry on.
///
/// ```swift
/// let listener = try await PeerListener.listen(unixPath: "/tmp/camera.sock", router: router)
/// for await peer in listener.peers { … }
/// ```
public final class PeerListener: Sendable {
    /// The socket path.
    public let path: String
    /// Connections that completed the handshake, in order. Ends when the listener closes.
    public let peers: AsyncStream<Peer>

    private let channel: any Channel
    private let continuation: AsyncStream<Peer>.Continuation
    private let accepted = Mutex<[ObjectIdentifier: Peer]?>([:])

    private init(path: String, channel: any Channel, peers: AsyncStream<Peer>, continuation: AsyncStream<Peer>.Continuation) {
        self.path = path
        self.channel = channel
        self.peers = peers
        self.continuation = continuation
    }

    /// Starts listening on `path`.
    ///
    /// A stale socket file (left by a process that died) is replaced; a path where
    /// another process is still accepting is refused.
    ///
    /// - Parameters:
    ///   - allowedUIDs: if set, only processes running as one of these user ids may
    ///     connect (checked with `SO_PEERCRED` before the handshake, so no handler
    ///     ever runs for anyone else; refused clients get a `permissionDenied` error frame).
    /// - Throws: ``IntercomError`` `nameInUse` (someone listens there), `permissionDenied`,
    ///   `invalidName` (path too long), `connectionFailed` (other OS errors).
    public static func listen(
        unixPath path: String, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration(),
        allowedUIDs: Set<UInt32>? = nil
    ) async throws(IntercomError) -> PeerListener {
        try UnixSocketPath.check(path)
        try Self.removeStaleSocket(at: path)
        let (stream, continuation) = AsyncStream.makeStream(of: Peer.self)
        let box = ListenerBox()
        let logger = configuration.logger
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: intercomEventLoopGroup)
                .serverChannelOption(ChannelOptions.backlog, value: 256)
                .childChannelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
                .childChannelInitializer { child in
                    let check: EventLoopFuture<String?> =
                        allowedUIDs.map { credentialRefusal(child, allowed: $0) } ?? child.eventLoop.makeSucceededFuture(nil)
                    return check.flatMap { refusal in
                        if let refusal {
                            // Before the handshake: no handler can run for this client.
                            logger.warning("refused a connection", metadata: ["path": "\(path)", "reason": "\(refusal)"])
                            let frame = ErrorBody(code: IntercomError.Code.permissionDenied.name, message: refusal).frame(id: 0)
                            return child.pipeline.addHandler(RefuseOnActive(frame: frame))
                        }
                        do {
                            let future = try installPeer(on: child, router: router, configuration: configuration)
                            future.whenComplete { result in
                                switch result {
                                case .success(let peer):
                                    box.listener?.adopt(peer)
                                case .failure(let error):
                                    logger.warning("refused a connection", metadata: ["path": "\(path)", "error": "\(error)"])
                                }
                            }
                            return child.eventLoop.makeSucceededVoidFuture()
                        } catch {
                            return child.eventLoop.makeFailedFuture(error)
                        }
                    }
                }
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false)
                .get()
        } catch {
            continuation.finish()
            throw IntercomError(systemError: error, doing: "listening on \(path)")
        }
        let listener = PeerListener(path: path, channel: channel, peers: stream, continuation: continuation)
        box.listener = listener
        return listener
    }

    private func adopt(_ peer: Peer) {
        let kept = self.accepted.withLock { accepted -> Bool in
            guard accepted != nil else { return false }
            accepted![ObjectIdentifier(peer)] = peer
            return true
        }
        guard kept else {
            Task { await peer.close() }
            return
        }
        self.continuation.yield(peer)
        Task { [weak self] in
            await peer.waitUntilClosed()
            _ = self?.accepted.withLock { $0?.removeValue(forKey: ObjectIdentifier(peer)) }
        }
    }

    /// The connections accepted and still open.
    public var connectedPeers: [Peer] {
        self.accepted.withLock { $0.map { Array($0.values) } ?? [] }
    }

    /// Stops accepting, closes every connection it accepted, and removes the socket file.
    public func close() async {
        let peers = self.accepted.withLock { accepted -> [Peer] in
            defer { accepted = nil }
            return accepted.map { Array($0.values) } ?? []
        }
        try? await self.channel.close()
        unlink(self.path)
        self.continuation.finish()
        for peer in peers { await peer.close() }
    }

    /// Deletes `path` if it is a socket nobody accepts on; refuses if someone does.
    private static func removeStaleSocket(at path: String) throws(IntercomError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw IntercomError(.nameInUse, "\(path) exists and is not a socket; refusing to replace it")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { POSIX.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                POSIX.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if connected == 0 {
            throw IntercomError(.nameInUse, "another process is already listening on \(path)")
        }
        if errno == ECONNREFUSED {
            unlink(path)
        } else if errno == EACCES {
            throw IntercomError(.permissionDenied, "no permission to use \(path)")
        }
    }
}

#if canImport(Glibc)
/// Linux's `struct ucred` (the Glibc module does not export it without `_GNU_SOURCE`).
private struct LinuxPeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
#endif

/// Why a just-accepted connection may not talk to us (nil if it may), from the
/// kernel's record of the connecting process's credentials.
private func credentialRefusal(_ channel: any Channel, allowed: Set<UInt32>) -> EventLoopFuture<String?> {
    guard let provider = channel as? any SocketOptionProvider else {
        return channel.eventLoop.makeSucceededFuture("cannot read the peer's credentials")
    }
    #if canImport(Glibc)
    let future: EventLoopFuture<LinuxPeerCredentials> = provider.unsafeGetSocketOption(
        level: .socket, name: NIOBSDSocket.Option(rawValue: SO_PEERCRED))
    return future.map { credentials -> String? in
        allowed.contains(credentials.uid)
            ? nil : "uid \(credentials.uid) (pid \(credentials.pid)) is not allowed to connect"
    }.recover { "cannot read the peer's credentials: \($0)" }
    #else
    let future: EventLoopFuture<xucred> = provider.unsafeGetSocketOption(
        level: NIOBSDSocket.OptionLevel(rawValue: 0 /* SOL_LOCAL */), name: NIOBSDSocket.Option(rawValue: LOCAL_PEERCRED))
    return future.map { credentials -> String? in
        allowed.contains(credentials.cr_uid) ? nil : "uid \(credentials.cr_uid) is not allowed to connect"
    }.recover { "cannot read the peer's credentials: \($0)" }
    #endif
}

/// Sends one error frame as soon as the connection is active, then closes it.
/// (Writing from the child initializer itself would wait for a registration that
/// waits for the initializer.)
private final class RefuseOnActive: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let frame: ByteBuffer
    init(frame: ByteBuffer) { self.frame = frame }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(NIOAny(self.frame)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Nothing the refused client sends is read.
    }
}

/// Lets the child initializer find the listener, which exists only after bind.
private final class ListenerBox: @unchecked Sendable {
    // Set once right after bind, before any handshake can complete
    // (a handshake needs a round trip on the event loop after accept).
    weak var listener: PeerListener?
}
