@_spi(IntercomInternals) public import IntercomTransport
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

/// Accepts connections on a Unix socket path or a network address; every
/// accepted connection that its ``AccessPolicy`` admits and that completes the
/// handshake becomes a ``Peer`` served by the listener's router.
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
    /// The socket path (empty for a network listener).
    public let path: String
    /// Where it listens; for a network listener asked for port 0, the port it got.
    public let endpoint: Endpoint
    /// Connections that completed the handshake, in order; ends when the listener
    /// closes. The first access also delivers the connections open at that moment.
    ///
    /// The stream exists only once asked for, so a listener whose connections
    /// nobody iterates holds on to none of them after they close (it used to keep
    /// every peer it ever accepted).
    public var peers: AsyncStream<Peer> {
        self.accepted.withLock { accepted in
            if let stream = accepted.stream { return stream.stream }
            let made = AsyncStream.makeStream(of: Peer.self)
            accepted.stream = made
            for entry in accepted.open.values.sorted(by: { $0.order < $1.order }) { made.continuation.yield(entry.peer) }
            if accepted.closed { made.continuation.finish() }
            return made.stream
        }
    }

    private let acceptor: Acceptor
    private let accepted = Locked(Accepted())
    /// Every connection's channel from the moment it is handed to an event loop
    /// until it closes, handshake or not: `close()` ends those too.
    private let channels: ListenerBox

    private struct Accepted {
        /// Connections open now, with the order they were accepted in.
        var open: [ObjectIdentifier: (order: UInt64, peer: Peer)] = [:]
        var nextOrder: UInt64 = 0
        var closed = false
        /// The socket file was removed by ``stopAccepting()`` (so `close()` leaves the path alone).
        var stoppedAccepting = false
        var stream: (stream: AsyncStream<Peer>, continuation: AsyncStream<Peer>.Continuation)?
    }

    /// What accepts: a thread of its own for a Unix socket (it checks credentials
    /// and backs off when descriptors run out), NIO's server channel for TCP.
    enum Acceptor {
        case unix(UnixSocketAcceptor)
        case network(any Channel)
    }

    init(endpoint: Endpoint, acceptor: Acceptor, channels: ListenerBox) {
        self.endpoint = endpoint
        self.path = endpoint.path
        self.acceptor = acceptor
        self.channels = channels
    }

    deinit {
        // A listener dropped without `close()` stops accepting (its thread and
        // socket would otherwise live on, refusing every client it accepts).
        switch self.acceptor {
        case .unix(let acceptor): acceptor.requestStop()
        case .network(let channel): channel.close(promise: nil)
        }
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
        try await Self.listen(
            unixPath: path, router: router, configuration: configuration, access: AccessPolicy(uids: allowedUIDs))
    }

    /// Starts listening on a Unix socket path, admitting the clients `access`
    /// allows by their kernel credentials (``AccessPolicy/uids``, ``AccessPolicy/gids``).
    ///
    /// - Throws: as ``listen(unixPath:router:configuration:allowedUIDs:)``.
    public static func listen(
        unixPath path: String, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration(),
        access: AccessPolicy
    ) async throws(IntercomError) -> PeerListener {
        try UnixSocketPath.check(path)
        try Self.removeStaleSocket(at: path)
        let fd = try UnixSocket.make()
        guard UnixSocket.bindAndListen(fd, at: path, backlog: Self.backlog) else {
            let code = errno
            POSIX.close(fd)
            let reason = String(cString: strerror(code))
            switch code {
            case EADDRINUSE: throw IntercomError(.nameInUse, "listening on \(path): \(reason)")
            case EACCES, EPERM: throw IntercomError(.permissionDenied, "listening on \(path): permission denied (\(reason))")
            default: throw IntercomError(.connectionFailed, "listening on \(path): \(reason)")
            }
        }
        let box = ListenerBox()
        let logger = configuration.serviceLogger
        let acceptor: UnixSocketAcceptor
        do {
            acceptor = try UnixSocketAcceptor(listening: fd, path: path, logger: logger) { connection in
                Self.serve(connection, path: path, router: router, configuration: configuration, access: access, box: box)
            }
        } catch {
            POSIX.close(fd)
            unlink(path)
            throw error
        }
        let listener = PeerListener(endpoint: .unix(path: path), acceptor: .unix(acceptor), channels: box)
        box.set(listener)
        listener.publishProperties(of: router)
        return listener
    }

    /// Connections waiting to be accepted before the kernel refuses more
    /// (capped by `net.core.somaxconn`).
    private static let backlog: Int32 = 1024

    /// On the acceptor's thread: checks who connected, then hands the descriptor
    /// to an event loop with either the handshake or a refusal installed.
    private static func serve(
        _ connection: Int32, path: String, router: Router?, configuration: Peer.Configuration, access: AccessPolicy,
        box: ListenerBox
    ) {
        let logger = configuration.serviceLogger
        // Before the handshake: no handler can run for a refused client.
        let refusal = Self.refusal(of: connection, by: access)
        let bootstrap = ClientBootstrap(group: intercomEventLoopGroup)
            .channelOption(ChannelOptions.writeBufferWaterMark, value: configuration.waterMark)
            .channelInitializer { child in
                guard box.track(child) else {
                    // The listener closed while this connection waited for its loop. A failed
                    // initializer makes the bootstrap close the channel without registering
                    // it; closing it here and succeeding made it register a closed channel,
                    // which NIO's debug builds stop the process for (seen under TSan on SIGTERM).
                    return child.eventLoop.makeFailedFuture(IntercomError(.closed, "the listener closed"))
                }
                if let refusal {
                    logger.warning("refused a connection", metadata: ["path": "\(path)", "reason": "\(refusal)"])
                    let frame = ErrorBody(code: IntercomError.Code.permissionDenied.name, message: refusal).frame(id: 0)
                    return child.pipeline.addHandler(RefuseOnActive(frame: frame))
                }
                do {
                    let future = try installPeer(on: child, descriptor: connection, router: router, configuration: configuration)
                    future.whenComplete { result in
                        switch result {
                        case .success(let peer):
                            box.adopt(peer)
                        case .failure(let error):
                            logger.warning("refused a connection", metadata: ["path": "\(path)", "error": "\(error)"])
                        }
                    }
                    return child.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return child.eventLoop.makeFailedFuture(error)
                }
            }
        bootstrap.withConnectedSocket(connection).whenFailure { error in
            if (error as? IntercomError)?.code == .closed { return }  // the listener closed: nothing to report
            logger.warning("could not serve a connection", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// Why the client on `connection` may not connect, judged by its kernel credentials.
    private static func refusal(of connection: Int32, by access: AccessPolicy) -> String? {
        guard access.uids != nil || access.gids != nil else { return nil }
        guard let kernel = UnixSocket.connectedPeerCredentials(connection) else {
            return "cannot read the client's credentials: \(String(cString: strerror(errno)))"
        }
        let credentials = PeerIdentity.Credentials(pid: kernel.pid, uid: kernel.uid, gid: kernel.gid)
        return access.refusal(of: PeerIdentity(name: "", reportedPID: kernel.pid, credentials: credentials)).map {
            "the client (pid \(kernel.pid)): \($0)"
        }
    }

    func adopt(_ peer: Peer) {
        let kept = self.accepted.withLock { accepted -> Bool in
            guard !accepted.closed else { return false }
            accepted.open[ObjectIdentifier(peer)] = (accepted.nextOrder, peer)
            accepted.nextOrder += 1
            // Under the lock, so the stream has them in the order they were listed.
            accepted.stream?.continuation.yield(peer)
            return true
        }
        guard kept else {
            Task { await peer.close() }
            return
        }
        Task { [weak self] in
            await peer.waitUntilClosed()
            _ = self?.accepted.withLock { $0.open.removeValue(forKey: ObjectIdentifier(peer)) }
        }
    }

    /// The connections accepted and still open.
    public var connectedPeers: [Peer] {
        self.accepted.withLock { $0.open.values.map(\.peer) }
    }

    /// Publishes an event to every connection subscribed to `topic`, never
    /// waiting (see ``Peer/publish(_:_:)``).
    ///
    /// - Returns: which peers it was sent to and which missed it.
    /// - Throws: ``IntercomError`` `invalidPayload` if `value` does not encode.
    @discardableResult
    public func publish<Value: Encodable>(_ topic: String, _ value: Value) throws(IntercomError) -> PublishReport {
        try Peer.publish(topic, value, to: self.connectedPeers)
    }

    /// Publishes the changes of `router`'s properties to this listener's connections.
    func publishProperties(of router: Router?) {
        for property in router?.properties ?? [] {
            property.attachPublisher { [weak self] topic, state in _ = try? self?.publish(topic, state) }
        }
    }

    /// Stops accepting new connections — and removes the socket file — but
    /// keeps those it accepted (a suspending service lets them finish).
    public func stopAccepting() async {
        switch self.acceptor {
        case .unix(let acceptor):
            let first = self.accepted.withLock { accepted in
                defer { accepted.stoppedAccepting = true }
                return !accepted.stoppedAccepting
            }
            await acceptor.stop()
            if first { unlink(self.path) }
        case .network(let channel):
            try? await channel.close().get()
        }
    }

    /// Stops accepting, closes every connection it accepted — those still in
    /// their handshake too — and removes the socket file. When it returns, no
    /// socket of the listener is open.
    public func close() async {
        let (peers, stream, unlinked) = self.accepted.withLock { accepted -> ([Peer], AsyncStream<Peer>.Continuation?, Bool) in
            defer {
                accepted.closed = true
                accepted.open = [:]
                accepted.stoppedAccepting = true
            }
            return (accepted.open.values.map(\.peer), accepted.stream?.continuation, accepted.stoppedAccepting)
        }
        switch self.acceptor {
        case .unix(let acceptor):
            await acceptor.stop()
            if !unlinked { unlink(self.path) }
        case .network(let channel):
            try? await channel.close().get()
        }
        stream?.finish()
        for peer in peers { await peer.close() }
        // What is left: connections still in their handshake (or refused ones
        // still saying why), and any that finished it after the list above.
        let unfinished = self.channels.stopTracking()
        for channel in unfinished { channel.close(promise: nil) }
        for channel in unfinished { try? await channel.closeFuture.get() }
    }

    /// Deletes `path` if it is a socket nobody accepts on; refuses if someone does.
    private static func removeStaleSocket(at path: String) throws(IntercomError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw IntercomError(.nameInUse, "\(path) exists and is not a socket; refusing to replace it")
        }
        // Non-blocking: a listener with a full backlog answers EAGAIN at once.
        guard let fd = try? UnixSocket.make() else { return }
        defer { POSIX.close(fd) }
        let connected = UnixSocket.withAddress(path) { POSIX.connect(fd, $0, $1) }
        if connected == 0 || errno == EAGAIN {
            throw IntercomError(.nameInUse, "another process is already listening on \(path)")
        }
        if errno == ECONNREFUSED {
            unlink(path)
        } else if errno == EACCES {
            throw IntercomError(.permissionDenied, "no permission to use \(path)")
        }
    }
}
