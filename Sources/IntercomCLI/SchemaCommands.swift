import ArgumentParser
import Intercom
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `intercom describe SERVICE`: every method with the wire shapes of its types.
struct Describe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a service's methods with the shapes of their arguments and results, derived from its Swift types.",
        discussion: "--json prints a snapshot that `intercom compat` reads: save it with a release, compare later builds against it.")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The service's name, or its address (tls://HOST:PORT).") var service: String
    @Flag(help: "Print the schema as JSON (a snapshot for `intercom compat`).") var json = false
    @Flag(help: "Include the built-in intercom.* methods.") var all = false

    func run() async throws {
        try await reportingErrors {
            var schema = try await fetchSchema(self.service, self.busOptions)
            if !self.all { schema = withoutBuiltIns(schema) }
            if self.json {
                print(try schemaJSON(schema))
            } else {
                print(schema.description)
            }
        }
    }
}

/// `intercom compat OLD NEW`: the wire-compatibility check.
struct Compat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare two versions of a service's schema and report what breaks old clients or old servers.",
        discussion: """
            OLD and NEW are each a snapshot file written by `intercom describe --json`, or a running service \
            (a name on the bus or an address). Exits with status 1 if a change breaks someone, so a build can \
            run it against the last release's snapshot.
            """)

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The old version: a snapshot file or a running service.") var old: String
    @Argument(help: "The new version: a snapshot file or a running service.") var new: String
    @Option(help: "Whose rules apply: binary (fields in order, unknown fields refused) or json.") var codec: String = "binary"
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard SchemaCompatibility.Codec(rawValue: self.codec) != nil else {
            throw ValidationError("--codec is binary or json, not '\(self.codec)'")
        }
    }

    func run() async throws {
        var breaking = false
        try await reportingErrors {
            let old = withoutBuiltIns(try await self.load(self.old))
            let new = withoutBuiltIns(try await self.load(self.new))
            let report = SchemaCompatibility.compare(old: old, new: new, codec: SchemaCompatibility.Codec(rawValue: self.codec)!)
            if self.json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                print(report.description)
            }
            breaking = !report.isCompatible
        }
        if breaking { throw ExitCode.failure }
    }

    private func load(_ source: String) async throws -> ServiceSchema {
        // A regular file is a snapshot; a socket path, an address or a name is a service.
        let type = (try? FileManager.default.attributesOfItem(atPath: source))?[.type] as? FileAttributeType
        guard type == .typeRegular else {
            return try await fetchSchema(source, self.busOptions)
        }
        do {
            return try JSONDecoder().decode(ServiceSchema.self, from: try Data(contentsOf: URL(fileURLWithPath: source)))
        } catch {
            throw IntercomError(.invalidPayload, "\(source) is not a schema snapshot (write one with `intercom describe --json`)", cause: error)
        }
    }
}

/// Asks a running service for its schema (`intercom.describe`).
func fetchSchema(_ service: String, _ options: BusOptions) async throws -> ServiceSchema {
    do {
        return try await options.withPeer(service) {
            try await $0.call("intercom.describe", 0, returning: ServiceSchema.self, timeout: .seconds(10))
        }
    } catch let error as IntercomError where error.code == .unknownMethod {
        throw IntercomError(
            .unknownMethod, "'\(service)' does not describe itself (no intercom.describe): it is built with an Intercom older than schemas; rebuild it",
            cause: error)
    }
}

/// The schema without the methods every bus service has (`intercom.info`, …), keeping properties.
func withoutBuiltIns(_ schema: ServiceSchema) -> ServiceSchema {
    schema.filter { !$0.name.hasPrefix("intercom.") || $0.name.hasPrefix("intercom.property.") }
}

func schemaJSON(_ schema: ServiceSchema) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    return String(decoding: try encoder.encode(schema), as: UTF8.self)
}
