public import IntercomCore
public import IntercomTransport

/// The commands of a system, looked up by name and by target, printed as a
/// table, and checked against the processes planned to handle them before any
/// starts (magscope's command registry and `validate_targets`).
///
/// ```swift
/// let registry = try CommandRegistry([SetExposure.self, Snapshot.self, Status.self])
/// try registry.validate(roles: ["camera": cameraRouter, "coordinator": coordinatorRouter])
/// print(registry.table())
/// ```
public struct CommandRegistry: Sendable {
    /// One command: its name and where it goes.
    public struct Entry: Sendable, Hashable {
        /// The command's method name.
        public var name: String
        /// Where it is delivered.
        public var delivery: CommandDelivery
    }

    /// The commands, sorted by name.
    public let entries: [Entry]

    /// A registry of `commands`.
    ///
    /// - Throws: ``IntercomError/Code/conflict`` if two command types share a name.
    public init(_ commands: [any Command.Type]) throws(IntercomError) {
        var byName: [String: Entry] = [:]
        for command in commands {
            guard byName[command.name] == nil else {
                throw IntercomError(.conflict, "two command types are named '\(command.name)'")
            }
            byName[command.name] = Entry(name: command.name, delivery: command.delivery)
        }
        self.entries = byName.values.sorted { $0.name < $1.name }
    }

    /// `commands` as they are, repeats kept (for checks that only read them).
    init(listing commands: [any Command.Type]) {
        self.entries = commands.map { Entry(name: $0.name, delivery: $0.delivery) }
    }

    /// The command a handler of method `name` serves, if it is one of these.
    public func command(named name: String) -> Entry? {
        self.entries.first { $0.name == name }
    }

    /// The service command `name` goes to (the coordinator's name for
    /// coordinator commands); nil for a broadcast command or an unknown name.
    public func target(of name: String, coordinator: String = "coordinator") -> String? {
        self.command(named: name)?.delivery.service(coordinator: coordinator)
    }

    /// The commands that go to `service` — the handlers it must have — sorted;
    /// broadcast commands are not among them (any service may handle those).
    public func commands(for service: String, coordinator: String = "coordinator") -> [String] {
        self.entries.filter { $0.delivery.service(coordinator: coordinator) == service }.map(\.name)
    }

    /// The commands as a table: name and where each goes, one per line.
    public func table(coordinator: String = "coordinator") -> String {
        let rows = self.entries.map { entry -> (String, String) in
            switch entry.delivery.target {
            case .service(let name): (entry.name, "service \(name)")
            case .coordinator: (entry.name, "coordinator (\(coordinator))")
            case .broadcast: (entry.name, "broadcast")
            }
        }
        let width = max(7, rows.map(\.0.count).max() ?? 0)
        let pad = { (text: String) in text + String(repeating: " ", count: width - text.count) }
        return ([pad("COMMAND") + "  GOES TO"] + rows.map { pad($0.0) + "  " + $0.1 }).joined(separator: "\n")
    }

    /// Checks, before anything starts, that the planned processes handle every
    /// command: each command's target is among `roles` and its router has a
    /// handler for it; a broadcast command has a handler in at least one role.
    ///
    /// - Parameter roles: the router each planned service will serve, by service name.
    /// - Throws: ``IntercomError/Code/missingHandler`` naming every command
    ///   without a handler and where it was looked for.
    public func validate(roles: [String: Router], coordinator: String = "coordinator") throws(IntercomError) {
        let missing = self.missingHandlers(
            coordinator: coordinator, methods: roles.mapValues { Set($0.methods) }, absent: "which no planned role is",
            lacking: { _ in ", whose router has no handler for it" }, anywhere: "any planned role")
        guard missing.isEmpty else { throw IntercomError(.missingHandler, missing.joined(separator: "; ")) }
    }

    /// Says, for each command without a handler where it goes, why — in the
    /// words of the caller's check (planned roles, or live services).
    ///
    /// - Parameters:
    ///   - methods: each service's methods, by service name.
    ///   - absent: how to say a command's service is not there.
    ///   - lacking: how to say the service (by name) has no handler for it.
    ///   - anywhere: where a broadcast command's handler was looked for.
    func missingHandlers(
        coordinator: String, methods: [String: Set<String>], absent: String, lacking: (String) -> String, anywhere: String
    ) -> [String] {
        self.entries.compactMap { entry in
            guard let target = entry.delivery.service(coordinator: coordinator) else {
                let handled = methods.values.contains { $0.contains(entry.name) }
                return handled ? nil : "command '\(entry.name)' (broadcast) has no handler in \(anywhere)"
            }
            guard let handled = methods[target] else { return "command '\(entry.name)' goes to service '\(target)', \(absent)" }
            return handled.contains(entry.name) ? nil : "command '\(entry.name)' goes to service '\(target)'\(lacking(target))"
        }
    }

}
