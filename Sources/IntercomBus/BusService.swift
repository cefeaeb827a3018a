@_spi(IntercomInternals) public import IntercomTransport
public import IntercomCore
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import IntercomWire
internal import NIOCore
internal import Synchronization
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// A service serving a name on a ``Bus``: it holds the name's lock, accepts
/// connections on the name's socket, and publishes events to subscribers.
///
/// Made by ``Bus/serve(_:router:replace:replaceTimeout:configuration:access:addresses:networkAccess:)``.
/// Close it to give the name up; if the process dies instead, the kernel drops
/// the lock and the next lookup removes the leftovers.
public final class BusService: Sendable {
    /// The name served.
    public let name: String
    /// The record other processes see.
    public let info: ServiceInfo
    /// The bus.
    public let bus: Bus

    let listener: PeerListener
    /// The router served (its traffic tap shows published events to monitors).
    let router: Router
    /// Listeners on network addresses besides the name's socket.
    let networkListeners: [PeerListener]
    private let lock: NameLock
    let recordPath: String
    /// The bus directory, held open: the socket, record and lock are addressed
    /// through it until the service is closed.
    let directory: BusDirectory
    let state = Locked(State())

    struct State {
        var suspending = false
        var closed = false
        var finished = false
        var closeWaiters: [UnsafeContinuation<Void, Never>] = []
        var quitRequested = false
        var quitWaiters: [UnsafeContinuation<Void, Never>] = []
    }

    private init(
        name: String, info: ServiceInfo, bus: Bus, directory: BusDirectory, listener: PeerListener,
        networkListeners: [PeerListener], lock: NameLock, recordPath: String, router: Router
    ) {
        self.router = router
        self.networkListeners = networkListeners
        self.directory = directory
        self.name = name
        self.info = info
        self.bus = bus
        self.listener = listener
        self.lock = lock
        self.recordPath = recordPath
    }

    static func start(
        name: String, bus: Bus, directory: BusDirectory, lock: NameLock, router: Router,
        configuration: Peer.Configuration, allowedUIDs: Set<UInt32>?, addresses: [Endpoint] = [],
        networkAccess: AccessPolicy = AccessPolicy()
    ) async throws(IntercomError) -> BusService {
        // The built-in handlers may run as soon as the listener accepts, before the
        // service object exists: they wait for it (nil if starting failed) instead
        // of answering "not yet" — an early `intercom.quit` used to be lost.
        let box = SetOnce<WeakReference<BusService>>()
        let methods = (router.methods + ["intercom.info", "intercom.quit", "intercom.describe", Router.monitorMethod]).sorted()
        var info = ServiceInfo(
            name: name, pid: getpid(), startTime: Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down)),
            protocolVersion: Int(FrameHeader.currentVersion),
            methods: Array(Set(methods)).sorted())
        let properties = router.propertyNames
        if !properties.isEmpty { info.properties = properties }
        // The addresses are known once bound (port 0 picks one), after the handler is registered.
        let published = Locked(info)
        try router.register("intercom.info") { (_: Int, _: CallContext) -> ServiceInfo in published.withLock { $0 } }
        try router.register("intercom.describe") { (_: Int, _: CallContext) -> ServiceSchema in router.schema }
        try router.registerMonitor()
        try router.register("intercom.quit") { (_: Int, context: CallContext) -> Bool in
            // Stop serving once the reply is queued (closing flushes what is queued),
            // so the caller learns that the quit was taken.
            context.afterReply { await box.value.object?.requestQuit() }
            return true
        }
        var networkListeners: [PeerListener] = []
        do {
            for address in addresses {
                networkListeners.append(
                    try await PeerListener.listen(on: address, router: router, configuration: configuration, access: networkAccess))
            }
        } catch {
            box.set(WeakReference(nil))
            for listener in networkListeners { await listener.close() }
            throw error
        }
        if !networkListeners.isEmpty {
            info.addresses = networkListeners.map(\.endpoint.description)
            published.withLock { [info] in $0 = info }
        }
        let socketPath = directory.socketPath(name)
        let listener: PeerListener
        do {
            listener = try await PeerListener.listen(
                unixPath: socketPath, router: router, configuration: configuration, allowedUIDs: allowedUIDs)
        } catch {
            box.set(WeakReference(nil))
            for listener in networkListeners { await listener.close() }
            throw error
        }
        guard chmod(socketPath, 0o600) == 0 else {
            box.set(WeakReference(nil))
            await listener.close()
            for listener in networkListeners { await listener.close() }
            throw IntercomError(.permissionDenied, "cannot make \(socketPath) private (chmod 0600 failed)")
        }
        let recordPath = directory.recordPath(name)
        do {
            try Self.writeRecord(info, to: recordPath, in: directory.base)
            // Back from a suspension (if there was one): callers waiting for it find this instance.
            ServiceSuspension.remove(name, in: directory)
        } catch {
            box.set(WeakReference(nil))
            await listener.close()
            for listener in networkListeners { await listener.close() }
            throw error
        }
        let service = BusService(
            name: name, info: info, bus: bus, directory: directory, listener: listener, networkListeners: networkListeners,
            lock: lock, recordPath: recordPath, router: router)
        router.traffic.countConnections { [weak service] in service?.connectedClients ?? [] }
        box.set(WeakReference(service))
        return service
    }

    /// Writes the record beside a temporary name and renames it into place: readers
    /// see no record or a whole one, and the rename never follows a planted symlink.
    private static func writeRecord(_ info: ServiceInfo, to path: String, in directory: String) throws(IntercomError) {
        try Self.writeJSON(info, to: path, temporary: "\(directory)/.\(info.name).json.\(getpid())")
    }

    /// Writes `value` as JSON beside `path` and renames it into place.
    static func writeJSON<Value: Encodable>(_ value: Value, to path: String, temporary: String) throws(IntercomError) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value) else {
            throw IntercomError(.invalidPayload, "cannot encode \(path)")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw IntercomError(.permissionDenied, "cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        POSIX.close(fd)
        guard written == data.count, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw IntercomError(.permissionDenied, "cannot write \(path)")
        }
    }

    /// Connections from clients, as they arrive (each already past the access
    /// check and the handshake), on the name's socket and every network address.
    /// The first access also delivers the clients connected at that moment;
    /// until then no closed connection is kept for it.
    public var clients: AsyncStream<Peer> {
        guard !self.networkListeners.isEmpty else { return self.listener.peers }
        let sources = [self.listener] + self.networkListeners
        let (stream, continuation) = AsyncStream.makeStream(of: Peer.self)
        let forwarding = Task {
            await withTaskGroup(of: Void.self) { group in
                for source in sources {
                    let peers = source.peers
                    group.addTask { for await peer in peers { continuation.yield(peer) } }
                }
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in forwarding.cancel() }
        return stream
    }

    /// The clients connected now, local and remote.
    public var connectedClients: [Peer] {
        self.listener.connectedPeers + self.networkListeners.flatMap(\.connectedPeers)
    }

    /// The network addresses the service listens on besides its name (with the
    /// ports they got, for those asked for on port 0).
    public var addresses: [Endpoint] { self.networkListeners.map(\.endpoint) }

    /// Publishes an event to every client subscribed to `topic`. Never waits: a
    /// client whose connection is full misses the event and is told how many it
    /// missed with the next one it gets.
    ///
    /// - Returns: which clients it was sent to and which missed it.
    /// - Throws: ``IntercomError`` `invalidPayload` if `value` does not encode.
    @discardableResult
    public func publish<Value: Encodable>(_ topic: String, _ value: Value) throws(IntercomError) -> PublishReport {
        self.router.traffic.recordEvent(service: self.name, topic: topic, value)
        return try Peer.publish(topic, value, to: self.connectedClients)
    }

    /// Returns when someone asked this service to quit (the built-in
    /// `intercom.quit`, used by `replace:` and by broadcasts) or it was closed.
    public func waitForQuit() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let now = self.state.withLock { state -> Bool in
                if state.quitRequested || state.closed { return true }
                state.quitWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    private func requestQuit() async {
        let waiters = self.state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.quitRequested = true
            defer { state.quitWaiters.removeAll() }
            return state.quitWaiters
        }
        for waiter in waiters { waiter.resume() }
        await self.close()
    }

    /// Stops serving: closes every client connection, removes the record and the
    /// socket, and gives up the name (the lock file goes last).
    public func close() async {
        let (first, waiters) = self.state.withLock { state -> (Bool, [UnsafeContinuation<Void, Never>]) in
            defer {
                state.closed = true
                state.quitWaiters.removeAll()
            }
            return (!state.closed, state.quitWaiters)
        }
        for waiter in waiters { waiter.resume() }
        guard first else {
            // Someone else is closing: return when they are done, so a caller that
            // exits right after never leaves the files behind.
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let done = self.state.withLock { state -> Bool in
                    if state.finished { return true }
                    state.closeWaiters.append(continuation)
                    return false
                }
                if done { continuation.resume() }
            }
            return
        }
        unlink(self.recordPath)
        await self.listener.close()
        for listener in self.networkListeners { await listener.close() }
        self.lock.release()
        // Last: nothing of the service addresses the directory after this, and a
        // caller that returns from close() must find no descriptor of it open.
        self.directory.closeDescriptor()
        let closeWaiters = self.state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.finished = true
            defer { state.closeWaiters.removeAll() }
            return state.closeWaiters
        }
        for waiter in closeWaiters { waiter.resume() }
    }
}
