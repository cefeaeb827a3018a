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

    /// The command a handler of method `name` serves, if it is one of these.
    public func command(named name: String) -> Entry? {
        self.entries.first { $0.name == name }
    }

    /// The service command `name` goes to (the coordinator's name for
    /// coordinator commands); nil for a broadcast command or an unknown name.
    public func target(of name: String, coordinator: String = "coordinator") -> String? {
        self.command(named: name).flatMap { Self.target(of: $0, coordinator: coordinator) }
    }

    /// The commands that go to `service` — the handlers it must have — sorted;
    /// broadcast commands are not among them (any service may handle those).
    public func commands(for service: String, coordinator: String = "coordinator") -> [String] {
        self.entries.filter { Self.target(of: $0, coordinator: coordinator) == service }.map(\.name)
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
        let methods = roles.mapValues { Set($0.methods) }
        var missing: [String] = []
        for entry in self.entries {
            if let target = Self.target(of: entry, coordinator: coordinator) {
                guard let handled = methods[target] else {
                    missing.append("command '\(entry.name)' goes to service '\(target)', which no planned role is")
                    continue
                }
                if !handled.contains(entry.name) {
                    missing.append("command '\(entry.name)' goes to service '\(target)', whose router has no handler for it")
                }
            } else if !methods.values.contains(where: { $0.contains(entry.name) }) {
                missing.append("command '\(entry.name)' (broadcast) has no handler in any planned role")
            }
        }
        guard missing.isEmpty else { throw IntercomError(.missingHandler, missing.joined(separator: "; ")) }
    }

    private static func target(of entry: Entry, coordinator: String) -> String? {
        switch entry.delivery.target {
        case .service(let name): name
        case .coordinator: coordinator
        case .broadcast: nil
        }
    }
}
