@_spi(IntercomInternals) public import IntercomTransport
public import IntercomCore
public import IntercomBus
public import Distributed
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import IntercomWire
internal import NIOCore
internal import Synchronization

/// Who a distributed actor is: the endpoint that hosts it (its
/// ``IntercomActorSystem/endpoint`` — usually the bus service name of its
/// process) and its name there (a well-known name, or a generated one).
public struct IntercomActorID: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The hosting endpoint.
    public var endpoint: String
    /// The actor's name within it.
    public var name: String

    /// An actor id.
    public init(endpoint: String, name: String) {
        self.endpoint = endpoint
        self.name = name
    }

    /// `name@endpoint`.
    public var description: String { "\(self.name)@\(self.endpoint)" }
}

/// Swift distributed actors over Intercom connections.
///
/// One system per process. It hosts this process's distributed actors (install
/// it on the ``Router`` of any connection or bus service with
/// ``install(on:)``) and reaches remote ones through connections it is given
/// (``register(_:as:)``) or, by service name, through its ``Bus``.
///
/// ```swift
/// // Service process
/// let system = IntercomActorSystem(endpoint: "calc", bus: bus)
/// let calculator = CalculatorActor(actorSystem: system)
/// system.publish(calculator, as: "calculator")
/// let router = Router(); try system.install(on: router)
/// let service = try await bus.serve("calc", router: router)
///
/// // Client process (needs only the protocol, thanks to @Resolvable)
/// let system = IntercomActorSystem(bus: bus)
/// let calc = try $Calculator.resolve(id: .init(endpoint: "calc", name: "calculator"), using: system)
/// let sum = try await calc.add(1, 2)
/// ```
///
/// Arguments, results and errors travel through the binary codec. A remote
/// Codable error whose type the caller links is rethrown as itself; others
/// arrive as ``IntercomError`` `remote` with the type's name. Cancellation and
/// the call timeout cross the boundary; a dead host makes calls fail with
/// `peerLost`; an actor that does not exist (or was deinitialised) fails calls
/// with `actorNotFound`. An actor resolved in its own process is called directly.
public final class IntercomActorSystem: DistributedActorSystem, Sendable {
    /// An actor's address: its process's endpoint and its name there.
    public typealias ActorID = IntercomActorID
    /// Records a call's arguments for the wire.
    public typealias InvocationEncoder = IntercomInvocationEncoder
    /// Reads them back on the hosting side.
    public typealias InvocationDecoder = IntercomInvocationDecoder
    /// Collects what the hosted target returned or threw.
    public typealias ResultHandler = IntercomResultHandler
    /// Arguments and results travel as `Codable` values (binary codec).
    public typealias SerializationRequirement = any Codable

    /// This process's endpoint name: the `endpoint` of every actor it hosts.
    public let endpoint: String
    /// How long a remote call may take.
    public let callTimeout: Duration
    private let bus: Bus?
    private let state = Locked(State())

    private struct State {
        var actors: [String: WeakActor] = [:]
        var aliases: [String: String] = [:]
        var peers: [String: Peer] = [:]
        var handles: [String: ServiceHandle] = [:]
        /// Connections being made to network endpoints (one per endpoint at a time).
        var connecting: [String: Task<Peer, any Error>] = [:]
        var remoteCalls = 0
    }

    /// The method actor calls travel under.
    static let method = "intercom.actor.call"

    /// How this system connects to endpoints that are network addresses (its TLS
    /// certificate and trust roots among others).
    public let configuration: Peer.Configuration

    /// A system whose actors are addressed as `endpoint` (default: a name unique
    /// to this process). With a `bus`, remote endpoints are found as bus services.
    /// Endpoints that are addresses (`tls://host:7411`, `tcp://…`, a socket path)
    /// are connected to directly with `configuration` — so an actor on another
    /// host is resolved from an id such as `calculator@tls://lab-2:7411`.
    public init(
        endpoint: String? = nil, bus: Bus? = nil, callTimeout: Duration = .seconds(30),
        configuration: Peer.Configuration = Peer.Configuration()
    ) {
        self.endpoint = endpoint ?? "pid-\(ProcessInfo.processInfo.processIdentifier)"
        self.bus = bus
        self.callTimeout = callTimeout
        self.configuration = configuration
    }

    // MARK: Hosting

    /// Serves this system's actors on every connection `router` answers.
    ///
    /// - Throws: ``IntercomError/Code/conflict`` if the router already has a system installed.
    public func install(on router: Router) throws(IntercomError) {
        try router.register(Self.method) { [weak self] (call: ActorCall, _: CallContext) -> ActorReply in
            guard let self else { return ActorReply(error: .init(IntercomError(.closed, "the actor system is gone"))) }
            return await self.execute(call)
        }
    }

    /// Makes `actor` reachable under a well-known `name` (``IntercomActorID/name``
    /// with this system's endpoint). The system does not keep it alive.
    public func publish<Act: DistributedActor>(_ actor: Act, as name: String) where Act.ID == ActorID {
        self.state.withLock { $0.aliases[name] = actor.id.name }
    }

    /// The id a remote process uses for the actor published here as `name`.
    public func id(forPublished name: String) -> ActorID {
        ActorID(endpoint: self.endpoint, name: name)
    }

    /// Reaches actors of `endpoint` through `peer` (a spawned worker, a parent, any connection).
    public func register(_ peer: Peer, as endpoint: String) {
        self.state.withLock { $0.peers[endpoint] = peer }
    }

    /// Remote calls made so far (calls to local actors are not counted: they are direct).
    public var remoteCallCount: Int { self.state.withLock { $0.remoteCalls } }

    private func localActor(named name: String) -> (any DistributedActor)? {
        self.state.withLock { state in
            let real = state.aliases[name] ?? name
            return state.actors[real]?.actor
        }
    }

    private func execute(_ call: ActorCall) async -> ActorReply {
        guard let actor = self.localActor(named: call.actor) else {
            return ActorReply(
                error: .init(
                    IntercomError(
                        .actorNotFound,
                        "no actor '\(call.actor)' at endpoint '\(self.endpoint)' (it never existed, or it was deinitialised)")))
        }
        var decoder = IntercomInvocationDecoder(call: call, actorType: type(of: actor))
        let handler = IntercomResultHandler()
        do {
            try await self.executeDistributedTarget(
                on: actor, target: RemoteCallTarget(call.target), invocationDecoder: &decoder, handler: handler)
        } catch {
            return ActorReply(error: .init(error))
        }
        return handler.reply ?? ActorReply(error: .init(IntercomError(.protocolViolation, "the target produced no result")))
    }

    // MARK: DistributedActorSystem

    /// The local instance for `id` if this process hosts it, nil for a remote
    /// one (the runtime then makes a proxy whose calls come through ``remoteCall(on:target:invocation:throwing:returning:)``).
    public func resolve<Act>(id: ActorID, as actorType: Act.Type) throws -> Act?
    where Act: DistributedActor, Act.ID == ActorID {
        guard id.endpoint == self.endpoint else { return nil }
        // Local: the caller gets the instance itself and calls it directly.
        return self.localActor(named: id.name) as? Act
    }

    /// A fresh ID in this process's endpoint for an actor being initialised.
    public func assignID<Act>(_ actorType: Act.Type) -> ActorID where Act: DistributedActor, Act.ID == ActorID {
        ActorID(endpoint: self.endpoint, name: UUID().uuidString)
    }

    /// Registers an initialised actor so calls to its ID reach it.
    public func actorReady<Act>(_ actor: Act) where Act: DistributedActor, Act.ID == ActorID {
        self.state.withLock { $0.actors[actor.id.name] = WeakActor(actor) }
    }

    /// Forgets an actor that was deinitialised; later calls to it fail with `actorNotFound`.
    public func resignID(_ id: ActorID) {
        self.state.withLock { state in
            state.actors[id.name] = nil
            state.aliases = state.aliases.filter { $0.value != id.name }
        }
    }

    /// A new recorder for one call's arguments.
    public func makeInvocationEncoder() -> InvocationEncoder {
        IntercomInvocationEncoder()
    }

    /// Calls a remote actor's distributed method and returns its result (the runtime calls this).
    public func remoteCall<Act, Err, Res>(
        on actor: Act, target: RemoteCallTarget, invocation: inout InvocationEncoder, throwing: Err.Type,
        returning: Res.Type
    ) async throws -> Res where Act: DistributedActor, Act.ID == ActorID, Err: Error, Res: Codable {
        let reply = try await self.send(actor.id, target: target, invocation: invocation)
        do {
            return try BinaryDecoder().decode(Res.self, from: ByteBuffer(bytes: reply))
        } catch {
            throw IntercomError(
                .invalidPayload, "the result of \(target.identifier) on \(actor.id) does not decode as \(Res.self): \(error)")
        }
    }

    /// Calls a remote actor's distributed method that returns nothing (the runtime calls this).
    public func remoteCallVoid<Act, Err>(
        on actor: Act, target: RemoteCallTarget, invocation: inout InvocationEncoder, throwing: Err.Type
    ) async throws where Act: DistributedActor, Act.ID == ActorID, Err: Error {
        _ = try await self.send(actor.id, target: target, invocation: invocation)
    }

    private func send(_ id: ActorID, target: RemoteCallTarget, invocation: InvocationEncoder) async throws -> [UInt8] {
        if let error = invocation.encodingError { throw error }
        self.state.withLock { $0.remoteCalls += 1 }
        let call = ActorCall(actor: id.name, target: target.identifier, generics: invocation.generics, arguments: invocation.arguments)
        let peer = try await self.peer(for: id.endpoint)
        let reply = try await peer.call(Self.method, call, returning: ActorReply.self, timeout: self.callTimeout)
        if let error = reply.error { throw error.rebuilt(endpoint: id.endpoint) }
        return reply.value ?? []
    }

    private func peer(for endpoint: String) async throws -> Peer {
        // A registered connection first: parsing the endpoint as an address on
        // every call (`Endpoint(_:)` splits the string) was a tenth of the caller's time.
        if let peer = self.state.withLock({ $0.peers[endpoint] }), !peer.isClosed { return peer }
        if let address = Endpoint(endpoint) { return try await self.peer(at: address, named: endpoint) }
        let (peer, handle) = self.state.withLock { state -> (Peer?, ServiceHandle?) in
            if let peer = state.peers[endpoint], !peer.isClosed { return (peer, nil) }
            guard let bus = self.bus else { return (nil, nil) }
            if let handle = state.handles[endpoint] { return (nil, handle) }
            let handle = bus.makeHandle(to: endpoint, whenAway: .failFast)
            state.handles[endpoint] = handle
            return (nil, handle)
        }
        if let peer { return peer }
        if let handle { return try await handle.peer(timeout: self.callTimeout) }
        throw IntercomError(
            .serviceNotFound,
            "no connection to actor endpoint '\(endpoint)': register one with register(_:as:) or give the system a bus")
    }

    /// The open connection to a network endpoint, or a new one (made once however
    /// many calls wait for it; made again after it ended).
    private func peer(at address: Endpoint, named endpoint: String) async throws -> Peer {
        let connecting = self.state.withLock { state -> Task<Peer, any Error> in
            if let task = state.connecting[endpoint] { return task }
            let configuration = self.configuration
            let task = Task<Peer, any Error> {
                try await Peer.connect(to: address, configuration: configuration)
            }
            state.connecting[endpoint] = task
            return task
        }
        do {
            let peer = try await connecting.value
            if !peer.isClosed { return peer }
        } catch {
            self.state.withLock { _ = $0.connecting.removeValue(forKey: endpoint) }
            throw error
        }
        // It ended since: forget it and connect again (once, whoever asks first).
        self.state.withLock { state in
            if state.connecting[endpoint] == connecting { state.connecting[endpoint] = nil }
        }
        return try await self.peer(at: address, named: endpoint)
    }

    /// Closes the connections the system opened — through the bus and to
    /// network endpoints (`close`, like every other thing in Intercom that holds
    /// connections open).
    public func close() async {
        let (handles, connections) = self.state.withLock { state -> ([ServiceHandle], [Task<Peer, any Error>]) in
            defer {
                state.handles.removeAll()
                state.connecting.removeAll()
            }
            return (Array(state.handles.values), Array(state.connecting.values))
        }
        for handle in handles { await handle.close() }
        for connection in connections {
            if let peer = try? await connection.value { await peer.close() }
        }
    }

    /// Renamed ``close()``.
    @available(*, deprecated, renamed: "close()")
    public func shutdown() async { await self.close() }
}

/// A weak reference, so hosting an actor does not keep it alive.
private struct WeakActor: @unchecked Sendable {
    // The reference is only read under the system's lock.
    weak var actor: (any DistributedActor)?
    init(_ actor: any DistributedActor) { self.actor = actor }
}

// MARK: - The wire messages of an actor call

/// One distributed call: which actor, which function, its generic arguments and
/// its arguments (each encoded with the binary codec).
struct ActorCall: Codable, Sendable {
    var actor: String
    var target: String
    var generics: [String]
    var arguments: [[UInt8]]

    init(actor: String, target: String, generics: [String], arguments: [[UInt8]]) {
        self.actor = actor
        self.target = target
        self.generics = generics
        self.arguments = arguments
    }

    // Positional, not keyed: both ends are this code, and field names on every
    // call were a measurable part of an actor call's overhead.
    init(from decoder: any Decoder) throws {
        var fields = try decoder.unkeyedContainer()
        self.actor = try fields.decode(String.self)
        self.target = try fields.decode(String.self)
        self.generics = try fields.decode([String].self)
        self.arguments = try fields.decode([[UInt8]].self)
    }

    func encode(to encoder: any Encoder) throws {
        var fields = encoder.unkeyedContainer()
        try fields.encode(self.actor)
        try fields.encode(self.target)
        try fields.encode(self.generics)
        try fields.encode(self.arguments)
    }
}

/// The outcome: the encoded result, or the error.
struct ActorReply: Codable, Sendable {
    var value: [UInt8]?
    var error: ActorFailure?

    init(value: [UInt8]) {
        self.value = value
    }

    init(error: ActorFailure) {
        self.error = error
    }

    // Positional: a tag (0 value, 1 error), then the one that is there.
    init(from decoder: any Decoder) throws {
        var fields = try decoder.unkeyedContainer()
        if try fields.decode(UInt8.self) == 0 {
            self.value = try fields.decode([UInt8].self)
        } else {
            self.error = try fields.decode(ActorFailure.self)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var fields = encoder.unkeyedContainer()
        if let error = self.error {
            try fields.encode(UInt8(1))
            try fields.encode(error)
        } else {
            try fields.encode(UInt8(0))
            try fields.encode(self.value ?? [])
        }
    }
}

/// A thrown error as it travels: its code, mangled type name, message, and the
/// encoded error itself when it is Codable.
struct ActorFailure: Codable, Sendable {
    var code: String
    var typeName: String
    var mangledType: String?
    var message: String
    var details: [UInt8]?

    init(_ error: any Error) {
        if let error = error as? IntercomError {
            self.code = error.code.name
            self.typeName = error.remoteType ?? ""
            self.message = error.message
            return
        }
        self.code = IntercomError.Code.remote.name
        self.typeName = String(reflecting: type(of: error))
        self.mangledType = _mangledTypeName(type(of: error))
        self.message = "\(error)"
        if let encodable = error as? any Encodable, let bytes = try? BinaryEncoder().encode(encodable) {
            self.details = Array(buffer: bytes)
        }
    }

    /// The error to throw on the calling side: the original Codable error if this
    /// process knows its type, otherwise an ``IntercomError``.
    func rebuilt(endpoint: String) -> any Error {
        if let mangledType, let details, let type = _typeByName(mangledType) as? any (Error & Decodable).Type,
            let error = try? BinaryDecoder().decode(type, from: ByteBuffer(bytes: details))
        {
            return error
        }
        return IntercomError(
            IntercomError.Code(wireName: self.code), self.message, context: .init(peer: endpoint),
            remoteType: self.typeName.isEmpty ? nil : self.typeName)
    }
}
