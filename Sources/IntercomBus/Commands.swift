public import IntercomTransport
public import IntercomCore
/// A typed command (magscope's Command dataclasses): a Codable value with a
/// stable name, the type of its reply, and where it is delivered.
///
/// ```swift
/// struct SetExposure: Command {
///     typealias Reply = Ack
///     static let name = "camera.exposure.set"
///     static let delivery = CommandDelivery.service("camera")
///     var ms: Int
/// }
/// try router.handle(SetExposure.self) { command, _ in Ack(ok: true) }   // in the camera
/// let ack = try await bus.call(SetExposure(ms: 10))                     // anywhere
/// ```
public protocol Command: Codable, Sendable {
    /// What handling the command returns.
    associatedtype Reply: Codable & Sendable
    /// The command's method name (dot-separated, unique on the bus).
    static var name: String { get }
    /// Where the command goes.
    static var delivery: CommandDelivery { get }
}

/// Where a ``Command`` is delivered. (A struct, not an enum: more modes may come
/// without breaking a user's `switch`.)
public struct CommandDelivery: Sendable, Hashable {
    enum Target: Hashable {
        case service(String)
        case broadcast
        case coordinator
    }
    let target: Target

    /// To the service with this name.
    public static func service(_ name: String) -> CommandDelivery { CommandDelivery(target: .service(name)) }
    /// To every live service that handles it.
    public static let broadcast = CommandDelivery(target: .broadcast)
    /// To the coordinating process (the service named by the caller's `coordinator`, default `coordinator`).
    public static let coordinator = CommandDelivery(target: .coordinator)

    /// The one service this delivery names (the coordinator's name for
    /// coordinator commands); nil for a broadcast.
    func service(coordinator: String) -> String? {
        switch self.target {
        case .service(let name): name
        case .coordinator: coordinator
        case .broadcast: nil
        }
    }
}

extension Router {
    /// Registers the handler of command `C`.
    ///
    /// - Throws: ``IntercomError/Code/conflict`` if `C` (or its name) already has a handler.
    public func handle<C: Command>(
        _ command: C.Type, _ handler: @escaping @Sendable (C, CallContext) async throws -> C.Reply
    ) throws(IntercomError) {
        try self.register(C.name, handler)
    }
}

extension Bus {
    /// Sends a command delivered to one process (``CommandDelivery/service(_:)`` or
    /// ``CommandDelivery/coordinator``) and returns its reply.
    ///
    /// - Parameters:
    ///   - target: the service to deliver this one command to instead of where
    ///     its type says (magscope's per-send target): another instance, a
    ///     test double; also one service for a broadcast command.
    /// - Throws: as ``Peer/call(_:_:returning:timeout:)``; `serviceNotFound` if the
    ///   target is not running; `invalidName` for a broadcast command without
    ///   `target` (use ``broadcast(_:timeout:)``).
    public func call<C: Command>(
        _ command: C, to target: String? = nil, coordinator: String = "coordinator", timeout: Duration = .seconds(30)
    ) async throws -> C.Reply {
        guard let target = target ?? C.delivery.service(coordinator: coordinator) else {
            throw IntercomError(.invalidName, "command '\(C.name)' is delivered by broadcast; use bus.broadcast(_:) or name a target")
        }
        let peer = try await self.connect(to: target)
        do {
            let reply = try await peer.call(C.name, command, returning: C.Reply.self, timeout: timeout)
            await peer.close()
            return reply
        } catch {
            await peer.close()
            throw error
        }
    }

    /// Renamed ``call(_:to:coordinator:timeout:)``: on a ``Peer``, `send` is one-way;
    /// a command is answered.
    @available(*, deprecated, renamed: "call(_:to:coordinator:timeout:)")
    public func send<C: Command>(_ command: C, coordinator: String = "coordinator", timeout: Duration = .seconds(30))
        async throws -> C.Reply
    {
        try await self.call(command, coordinator: coordinator, timeout: timeout)
    }

    /// Sends a command to every live service that handles it, whatever its
    /// delivery mode, and reports who handled it.
    public func broadcast<C: Command>(_ command: C, timeout: Duration = .seconds(2))
        async throws(IntercomError) -> BroadcastReport<C.Reply>
    {
        try await self.broadcast(C.name, command, returning: C.Reply.self, timeout: timeout, onlyServicesHandlingIt: true)
    }

    /// Checks that every declared command has a reachable handler now: its
    /// service (or the coordinator) is running and lists the command among its
    /// methods; a broadcast command has at least one such service. Run it at
    /// start-up, once the services are up.
    ///
    /// - Throws: ``IntercomError/Code/missingHandler`` naming every command without
    ///   a handler and the target it was looked for in.
    public func checkHandlers(for commands: [any Command.Type], coordinator: String = "coordinator") throws(IntercomError) {
        let live = Dictionary(try self.services().map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let missing = CommandRegistry(listing: commands).missingHandlers(
            coordinator: coordinator, methods: live.mapValues { Set($0.methods) }, absent: "which is not running",
            lacking: { " (pid \(live[$0]?.pid ?? 0)), which has no handler for it" }, anywhere: "any live service")
        guard missing.isEmpty else { throw IntercomError(.missingHandler, missing.joined(separator: "; ")) }
    }
}
