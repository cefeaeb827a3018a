import ArgumentParser
import Intercom
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `intercom get SERVICE PROPERTY`.
struct GetProperty: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "get", abstract: "Print a service's property as JSON.")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The service's name, or its address (tls://HOST:PORT).") var service: String
    @Argument(help: "The property's name.") var property: String

    func run() async throws {
        try await reportingErrors {
            let peer = try await self.busOptions.connect(to: self.service, configuration: self.busOptions.configuration())
            let reply = try await peer.callJSON(PropertyNames.get(self.property), json: "0", timeout: .seconds(10))
            print(try propertyValue(fromState: reply))
            await peer.close()
        }
    }
}

/// `intercom set SERVICE PROPERTY JSON`.
struct SetProperty: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Ask a service to change a property (it may refuse); print the value now set.")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The service's name, or its address (tls://HOST:PORT).") var service: String
    @Argument(help: "The property's name.") var property: String
    @Argument(help: "The new value as JSON; - reads it from standard input, @FILE from FILE.") var json: String

    func run() async throws {
        try await reportingErrors {
            let argument = try readArgument(self.json)
            let peer = try await self.busOptions.connect(to: self.service, configuration: self.busOptions.configuration())
            let reply = try await peer.callJSON(PropertyNames.set(self.property), json: argument, timeout: .seconds(10))
            print(try propertyValue(fromState: reply))
            await peer.close()
        }
    }
}

/// `intercom watch --service S --property P`: prints the value now, then each
/// newer one, as JSON — schema-less, so through the JSON layer (a typed
/// ``Peer/propertyChanges(_:as:)`` needs the value's type).
func watchProperty(_ name: String, of peer: Peer) async throws {
    // Subscribed before reading the current value, so no change falls between;
    // a queue of one keeps a slow terminal at the latest value.
    let changes = peer.jsonEvents(PropertyNames.topic(name), bufferSize: 1)
    let current = try propertyState(from: try await peer.callJSON(PropertyNames.get(name), json: "0", timeout: .seconds(10)))
    printLine(try jsonText(current.value))
    var version = current.version
    for try await change in changes {
        guard case .event(_, let json) = change else { continue }
        let state = try propertyState(from: json)
        guard state.version > version else { continue }
        version = state.version
        printLine(try jsonText(state.value))
    }
}

/// The `value` of a property state as JSON text (the state is `{"version":…,"value":…}`).
func propertyValue(fromState json: String) throws(IntercomError) -> String {
    try jsonText(try propertyState(from: json).value)
}

private func propertyState(from json: String) throws(IntercomError) -> PropertyState<JSONValue> {
    do {
        return try JSONDecoder().decode(PropertyState<JSONValue>.self, from: Data(json.utf8))
    } catch {
        throw IntercomError(.invalidPayload, "the property's state does not parse: \(json)", cause: error)
    }
}

private func jsonText(_ value: JSONValue) throws(IntercomError) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    do {
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    } catch {
        throw IntercomError(.invalidPayload, "cannot print the value as JSON", cause: error)
    }
}
