/// Compares two versions of a service's schema and says which changes break
/// old clients or old servers (`intercom compat`, or a test in a user's suite).
///
/// Every difference is found once, old against new, and then judged by who
/// writes and who reads it: an argument (and a streamed input) is written by the
/// client and read by the service, a result (and a streamed item) the other
/// way. A field the reader requires but the writer may leave out breaks; so does
/// an enum value the reader does not know, or a retyped field. With the binary
/// codec fields are read in order and a field the reader does not know is an
/// error, so an added or removed field breaks whoever reads it; with JSON the
/// reader ignores fields it does not know.
///
/// ```swift
/// let report = SchemaCompatibility.compare(old: snapshot, new: router.schema)
/// #expect(report.breaking.isEmpty, "\(report)")
/// ```
public enum SchemaCompatibility {
    /// Which codec's rules apply.
    public enum Codec: String, Sendable, Codable, CaseIterable {
        /// Intercom's binary codec: fields in order, unknown fields an error.
        case binary
        /// JSON: fields by name, unknown fields ignored.
        case json
    }

    /// Every difference between `old` and `new`, each with who it breaks.
    public static func compare(old: ServiceSchema, new: ServiceSchema, codec: Codec = .binary) -> CompatibilityReport {
        var changes: [SchemaChange] = []
        let names = Set(old.methods.map(\.name)).union(new.methods.map(\.name)).sorted()
        for name in names {
            switch (old.method(name), new.method(name)) {
            case (_?, nil):
                changes.append(SchemaChange(method: name, path: "", change: "method removed", breaks: [.oldClients]))
            case (nil, _?):
                changes.append(SchemaChange(method: name, path: "", change: "method added", breaks: []))
            case (let before?, let after?):
                var differ = ShapeDiffer(old: old, new: new, codec: codec)
                if before.kind != after.kind {
                    changes.append(
                        SchemaChange(
                            method: name, path: "", change: "changed from \(before.kind.rawValue) to \(after.kind.rawValue)",
                            breaks: [.oldClients, .oldServers]))
                    continue
                }
                // (path, old, new, whether the client writes it)
                let flows: [(String, WireShape?, WireShape?, Bool)] = [
                    ("argument", before.argument, after.argument, true),
                    ("result", before.result, after.result, false),
                    ("item", before.item, after.item, false),
                    ("input", before.input, after.input, true),
                ]
                for (path, oldShape, newShape, clientWrites) in flows {
                    guard let oldShape, let newShape else { continue }
                    for difference in differ.compare(oldShape, newShape, at: path) {
                        changes.append(difference.change(method: name, clientWrites: clientWrites))
                    }
                }
            case (nil, nil):
                break
            }
        }
        return CompatibilityReport(codec: codec, changes: changes)
    }
}

/// The outcome of ``SchemaCompatibility/compare(old:new:codec:)``.
public struct CompatibilityReport: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The codec whose rules were applied.
    public var codec: SchemaCompatibility.Codec
    /// Every difference found, breaking or not, in method order.
    public var changes: [SchemaChange]

    /// The changes that break someone.
    public var breaking: [SchemaChange] { self.changes.filter { !$0.breaks.isEmpty } }

    /// Whether old clients and old servers both keep working.
    public var isCompatible: Bool { self.breaking.isEmpty }

    /// One line per change, breaking ones marked.
    public var description: String {
        guard !self.changes.isEmpty else { return "no changes" }
        return self.changes.map(\.description).joined(separator: "\n")
    }
}

/// One difference between two versions of a service.
public struct SchemaChange: Codable, Sendable, Hashable, CustomStringConvertible {
    /// Who a change breaks.
    public enum Audience: String, Codable, Sendable, Hashable, Comparable {
        /// Clients built against the old version, calling the new service.
        case oldClients
        /// Services still running the old version, called by new clients.
        case oldServers

        public static func < (lhs: Audience, rhs: Audience) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// The method.
    public var method: String
    /// Where in it (`argument.reading.unit`; empty for the method itself).
    public var path: String
    /// What changed.
    public var change: String
    /// Who it breaks, sorted; empty if it is safe.
    public var breaks: [Audience]

    /// Creates a change.
    public init(method: String, path: String, change: String, breaks: Set<Audience>) {
        self.method = method
        self.path = path
        self.change = change
        self.breaks = breaks.sorted()
    }

    /// `BREAKING (old clients) camera.snapshot argument.exposure: field added, required`.
    public var description: String {
        let verdict =
            self.breaks.isEmpty
            ? "safe"
            : "BREAKING (\(self.breaks.map { $0 == .oldClients ? "old clients" : "old servers" }.joined(separator: ", ")))"
        let place = self.path.isEmpty ? self.method : "\(self.method) \(self.path)"
        return "\(verdict) \(place): \(self.change)"
    }
}

/// A difference found by ``ShapeDiffer``, with whether it breaks a reader of the
/// new version fed by an old writer, and the other way round.
struct ShapeDifference {
    var path: String
    var change: String
    /// An old writer, a new reader.
    var breaksNewReader: Bool
    /// A new writer, an old reader.
    var breaksOldReader: Bool

    func change(method: String, clientWrites: Bool) -> SchemaChange {
        var breaks: Set<SchemaChange.Audience> = []
        // Old clients: an old client writes arguments the new service reads, and reads results a new service writes.
        if clientWrites ? self.breaksNewReader : self.breaksOldReader { breaks.insert(.oldClients) }
        // Old servers: an old service reads arguments new clients write, and writes results new clients read.
        if clientWrites ? self.breaksOldReader : self.breaksNewReader { breaks.insert(.oldServers) }
        return SchemaChange(method: method, path: self.path, change: self.change, breaks: breaks)
    }
}
