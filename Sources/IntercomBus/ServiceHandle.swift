@_spi(IntercomInternals) public import IntercomTransport
public import IntercomCore
internal import Synchronization

/// A client's lasting handle to a named service — or to a service at a network
/// address: it connects on first use, notices when the service goes away, and
/// reconnects to whichever process serves the name (or address) next (a restart
/// under a new pid).
///
/// ```swift
/// let camera = bus.makeHandle(to: "camera")
/// let ack = try await camera.call("camera.exposure.set", SetExposure(ms: 10), returning: Ack.self)
/// ```
///
/// Calls pending when the service dies fail with ``IntercomError/Code/peerLost``
/// (their outcome is unknown, so they are not retried). A call made while the
/// service is away waits for it until the call's deadline, or fails at once with
/// `serviceNotFound` if the handle was made with ``WhenAway/failFast``. A
/// service that suspends to restart (``BusService/suspend(backWithin:drainTimeout:)``)
/// loses no call: those it received it answers, and those made meanwhile wait
/// for the next instance and go to it — fail-fast handles too.
public final class ServiceHandle: Sendable {
    /// What a call does while the service is not running. (A struct, not an
    /// enum: more behaviours may come without breaking a user's `switch`.)
    public struct WhenAway: Sendable, Hashable {
        enum Behaviour: Hashable { case waitUntilDeadline, failFast }
        let behaviour: Behaviour

        /// Wait for the service to come (back) up, until the call's deadline.
        public static let waitUntilDeadline = WhenAway(behaviour: .waitUntilDeadline)
        /// Fail at once with `serviceNotFound`.
        public static let failFast = WhenAway(behaviour: .failFast)
    }

    /// What happens to the service behind a handle.
    public enum Change: Sendable, Hashable {
        /// Connected to the process serving the name.
        case connected(pid: Int32)
        /// That process went away (exited, crashed, quit or was replaced).
        case lost(pid: Int32, reason: IntercomError)
    }

    /// The service's name (for a handle to an address, the address as written).
    public let name: String
    /// The bus the name is looked up on; nil for a handle to an address.
    public let bus: Bus?
    /// The address connected to, for a handle made with ``init(connectingTo:whenAway:configuration:)``.
    public let endpoint: Endpoint?
    /// What calls do while the service is away.
    public let whenAway: WhenAway
    /// Connects, losses and reconnects, as they happen.
    public let changes: AsyncStream<Change>
    /// The handle's connection states as they happen (epyrpc's connection-state
    /// listener): `connecting` when it looks for the service, `connected` the
    /// first time, `lost` when the process goes away, `reconnected` after, and
    /// `closed` when the handle is closed, which ends the sequence.
    public let states: AsyncStream<ConnectionState>

    private let configuration: Peer.Configuration
    private let changesContinuation: AsyncStream<Change>.Continuation
    private let statesContinuation: AsyncStream<ConnectionState>.Continuation
    private let state = Locked(State())

    private struct State {
        var peer: Peer?
        var closed = false
        /// A connection was made before (the next one is a reconnection).
        var everConnected = false
        /// `connecting` was reported and no connection or loss since.
        var connecting = false
    }

    convenience init(name: String, bus: Bus, whenAway: WhenAway, configuration: Peer.Configuration) {
        self.init(name: name, bus: bus, endpoint: nil, whenAway: whenAway, configuration: configuration)
    }

    private init(name: String, bus: Bus?, endpoint: Endpoint?, whenAway: WhenAway, configuration: Peer.Configuration) {
        self.name = name
        self.bus = bus
        self.endpoint = endpoint
        self.whenAway = whenAway
        self.configuration = configuration
        (self.changes, self.changesContinuation) = AsyncStream.makeStream(of: Change.self)
        (self.states, self.statesContinuation) = AsyncStream.makeStream(of: ConnectionState.self)
    }

    /// A handle to the service at `endpoint` (another host's `tls://…`, or a
    /// socket path). While the service is away — restarting, or its host
    /// rebooting — calls wait per `whenAway`, retrying the connection with a
    /// backoff from 50 ms to 1 s; an authentication failure is not retried.
    public convenience init(
        connectingTo endpoint: Endpoint, whenAway: WhenAway = .waitUntilDeadline, configuration: Peer.Configuration
    ) {
        self.init(name: endpoint.description, bus: nil, endpoint: endpoint, whenAway: whenAway, configuration: configuration)
    }

    /// The connection to the current process serving the name, connecting (and
    /// waiting, per ``whenAway``, up to `timeout`) if there is none.
    public func peer(timeout: Duration? = nil) async throws(IntercomError) -> Peer {
        if let peer = self.state.withLock({ $0.peer }), !peer.isClosed { return peer }
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let announce = self.state.withLock { state -> Bool in
            guard !state.connecting, !state.closed else { return false }
            state.connecting = true
            return true
        }
        if announce { self.statesContinuation.yield(.connecting) }
        let peer = try await self.connect(timeout: timeout)
        let (kept, closed, reconnected) = self.state.withLock { state -> (Peer, Bool, Bool) in
            if state.closed { return (peer, true, false) }
            if let current = state.peer, !current.isClosed { return (current, false, false) }  // another task won the race
            state.peer = peer
            state.connecting = false
            defer { state.everConnected = true }
            return (peer, false, state.everConnected)
        }
        if closed {
            await peer.close()
            throw IntercomError(.closed, "the handle to '\(self.name)' is closed")
        }
        if kept === peer {
            self.changesContinuation.yield(.connected(pid: peer.remote.reportedPID))
            let pid = peer.remote.reportedPID
            self.statesContinuation.yield(reconnected ? .reconnected(pid: pid) : .connected(pid: pid))
            Task { [weak self] in
                await peer.waitUntilClosed()
                self?.lost(peer)
            }
        } else {
            await peer.close()
        }
        return kept
    }

    private func connect(timeout: Duration) async throws(IntercomError) -> Peer {
        if let endpoint = self.endpoint { return try await self.connect(to: endpoint, timeout: timeout) }
        guard let bus = self.bus else { throw IntercomError(.closed, "the handle has neither a bus nor an address") }
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                switch self.whenAway.behaviour {
                case .failFast:
                    return try await bus.connect(to: self.name, configuration: self.configuration)
                case .waitUntilDeadline:
                    return try await bus.connect(to: self.name, timeout: deadline - .now, configuration: self.configuration)
                }
            } catch where [.serviceNotFound, .connectionFailed].contains(error.code) && bus.suspension(of: self.name) != nil {
                // Suspended (restarting on purpose): wait for the next instance, fail-fast or not.
                // (`connectionFailed`: the old instance stopped accepting between the lookup and the connect.)
                guard deadline > .now else {
                    throw IntercomError(.timeout, "service '\(self.name)' is suspended and did not come back within \(timeout)")
                }
                _ = try? await bus.waitForService(self.name, timeout: deadline - .now)
            }
        }
    }

    /// Connects to the address, retrying while nobody listens there (until the deadline).
    private func connect(to endpoint: Endpoint, timeout: Duration) async throws(IntercomError) -> Peer {
        let deadline = ContinuousClock.now + timeout
        var backoff = Duration.milliseconds(50)
        while true {
            do {
                return try await Peer.connect(to: endpoint, configuration: self.configuration)
            } catch where error.code == .connectionFailed && self.whenAway == .waitUntilDeadline {
                guard ContinuousClock.now + backoff < deadline, !self.state.withLock({ $0.closed }) else {
                    throw IntercomError(.timeout, "\(endpoint) did not come back within \(timeout): \(error.message)", cause: error)
                }
                do {
                    try await Task.sleep(for: backoff)
                } catch {
                    throw IntercomError(.cancelled, "waiting for \(endpoint) was cancelled")
                }
                backoff = min(backoff * 2, .seconds(1))
            }
        }
    }

    private func lost(_ peer: Peer, suspended: Bool = false) {
        let wasCurrent = self.state.withLock { state -> Bool in
            guard state.peer === peer else { return false }
            state.peer = nil
            return !state.closed
        }
        guard wasCurrent else { return }
        let reason =
            suspended || peer.otherSideSuspends
            ? IntercomError(.suspended, "service '\(self.name)' (pid \(peer.remote.reportedPID)) suspended to restart")
            : IntercomError(.peerLost, "service '\(self.name)' (pid \(peer.remote.reportedPID)) went away")
        self.changesContinuation.yield(.lost(pid: peer.remote.reportedPID, reason: reason))
        self.statesContinuation.yield(.lost(reason))
    }

    /// Calls `method` on whichever process serves the name now.
    ///
    /// - Throws: as ``Peer/call(_:_:returning:timeout:)``, plus `serviceNotFound`
    ///   (fail-fast handle, service away) or `timeout` (service did not come back in time).
    public func call<Request: Encodable & Sendable, Response: Decodable>(
        _ method: String, _ request: Request, returning: Response.Type = Response.self, timeout: Duration? = nil
    ) async throws -> Response {
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        let deadline = ContinuousClock.now + timeout
        while true {
            let peer = try await self.peer(timeout: deadline - .now)
            do {
                return try await peer.call(method, request, returning: Response.self, timeout: deadline - .now)
            } catch let error as IntercomError where error.code == .suspended {
                // Never sent: the service suspended to restart. Make it again on the next instance.
                self.lost(peer, suspended: true)
                guard deadline > .now else { throw error }
            }
        }
    }

    /// Sends a one-way message to whichever process serves the name now.
    public func send<Message: Encodable>(_ method: String, _ message: Message) async throws(IntercomError) {
        try await self.peer().send(method, message)
    }

    /// Closes the current connection; later calls fail with `closed`.
    public func close() async {
        let peer = self.state.withLock { state -> Peer? in
            state.closed = true
            defer { state.peer = nil }
            return state.peer
        }
        self.changesContinuation.finish()
        self.statesContinuation.yield(.closed)
        self.statesContinuation.finish()
        await peer?.close()
    }
}

extension Bus {
    /// Makes a lasting handle to the service `name` (see ``ServiceHandle``).
    /// Nothing is connected until it is first used.
    public func makeHandle(
        to name: String, whenAway: ServiceHandle.WhenAway = .waitUntilDeadline,
        configuration: Peer.Configuration = Peer.Configuration()
    ) -> ServiceHandle {
        ServiceHandle(name: name, bus: self, whenAway: whenAway, configuration: configuration)
    }

    /// Renamed ``makeHandle(to:whenAway:configuration:)``: `handle` is a verb on
    /// `Router` (``Router/handle(_:_:)``).
    @available(*, deprecated, renamed: "makeHandle(to:whenAway:configuration:)")
    public func handle(
        to name: String, whenAway: ServiceHandle.WhenAway = .waitUntilDeadline,
        configuration: Peer.Configuration = Peer.Configuration()
    ) -> ServiceHandle {
        self.makeHandle(to: name, whenAway: whenAway, configuration: configuration)
    }
}
