import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Intercom
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs `body`; an ``IntercomError`` becomes `error: CODE: message` on standard
/// error and exit status 1.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as IntercomError {
        let type = error.remoteType.map { " (\($0))" } ?? ""
        progress("error: \(error.code)\(type): \(error.message)")
        throw ExitCode.failure
    }
}

/// `intercom list`: the live services on the bus.
struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the live services on the bus.")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "A service's address (tls://HOST:PORT) to list instead of the bus.") var address: String?
    @Flag(help: "Print JSON instead of a table.") var json = false

    func run() async throws {
        try await reportingErrors {
            let services: [ServiceInfo]
            if let address = self.address {
                services = [try await self.busOptions.info(at: address)]
            } else {
                services = try self.busOptions.resolve().services()
            }
            if self.json {
                let encoder = JSONEncoder()
                encoder.dateEncodingStrategy = .iso8601
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                print(String(decoding: try encoder.encode(services), as: UTF8.self))
                return
            }
            guard !services.isEmpty else {
                print("no services on bus \(try self.busOptions.resolve().directory)")
                return
            }
            // Addresses only when a service has some: most buses are local.
            let addressed = services.contains { !($0.addresses ?? []).isEmpty }
            let rows = services.map { service -> [String] in
                let methods = service.methods.filter { !$0.hasPrefix("intercom.") }
                let addresses = addressed ? [(service.addresses ?? []).joined(separator: " ")] : []
                return [service.name, "\(service.pid)", formatUptime(Date().timeIntervalSince(service.startTime))]
                    + addresses + [methods.joined(separator: ", ")]
            }
            printTable(header: ["NAME", "PID", "UPTIME"] + (addressed ? ["ADDRESSES"] : []) + ["METHODS"], rows: rows)
        }
    }
}

func formatUptime(_ seconds: TimeInterval) -> String {
    let total = max(0, Int(seconds))
    if total < 60 { return "\(total)s" }
    if total < 3600 { return "\(total / 60)m\(total % 60)s" }
    return "\(total / 3600)h\(total % 3600 / 60)m"
}

func printTable(header: [String], rows: [[String]]) {
    let widths = header.indices.map { column in
        ([header] + rows).map { $0[column].count }.max() ?? 0
    }
    for row in [header] + rows {
        let cells = row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : left(cell, widths[index])
        }
        print(cells.joined(separator: "  "))
    }
}

/// `intercom call SERVICE METHOD [JSON | - | @FILE]`.
struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a method of a service with a JSON argument and print the JSON reply.")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The service's name, or its address (tls://HOST:PORT).") var service: String
    @Argument(help: "The method, e.g. camera.exposure.set.") var method: String
    @Argument(
        help: "The argument as JSON (default: null); - reads it from standard input, @FILE from FILE (for arguments too long for a command line).")
    var json: String = "null"
    @Option(help: "Seconds to wait for the connection and the reply: a number from 0.001 to 86400.") var timeout: Double = 10
    @Option(help: "Send the lines of FILE (- for standard input), one JSON value each, as the call's input stream (client-streaming and bidirectional methods).")
    var input: String?

    func validate() throws {
        try requireSeconds(self.timeout, option: "--timeout")
    }

    func run() async throws {
        try await reportingErrors {
            let timeout = Duration.seconds(self.timeout)
            let deadline = ContinuousClock.now + timeout
            let argument = try readArgument(self.json)
            // The caller's timeout covers the handshake too: a stopped service is
            // reported after it, not after the default 10 s.
            var configuration = try self.busOptions.configuration()
            configuration.handshakeTimeout = timeout
            let peer = try await self.busOptions.connect(to: self.service, configuration: configuration)
            let remaining = max(deadline - .now, .milliseconds(1))
            // As a stream when the method is one (one line per item), else one reply.
            let items = Atomic<Int>(0)
            let print: @Sendable (String) -> Void = { item in
                items.add(1, ordering: .relaxed)
                printLine(item)
            }
            let reply: String
            if let input = self.input {
                let lines = try readInputLines(input)
                reply = try await peer.callJSONStreaming(self.method, json: argument, inputs: lines, timeout: remaining, item: print)
            } else {
                reply = try await peer.callJSONStreaming(self.method, json: argument, timeout: remaining, item: print)
            }
            if items.load(ordering: .relaxed) == 0 || reply != "null" { print(reply) }
            await peer.close()
        }
    }
}

/// The JSON argument of `intercom call`: as given, or from standard input (`-`)
/// or a file (`@PATH`).
func readArgument(_ given: String) throws(IntercomError) -> String {
    if given == "-" {
        guard let bytes = readStandardInput() else {
            throw IntercomError(
                .invalidPayload, "cannot read the argument from standard input: \(String(cString: strerror(errno)))")
        }
        return String(decoding: bytes, as: UTF8.self)
    }
    if given.hasPrefix("@") {
        let path = String(given.dropFirst())
        guard let data = FileManager.default.contents(atPath: path) else {
            throw IntercomError(.invalidPayload, "cannot read the argument file \(path)")
        }
        return String(decoding: data, as: UTF8.self)
    }
    return given
}

/// The non-empty lines of `--input`: a file, or standard input for `-`.
func readInputLines(_ source: String) throws(IntercomError) -> [String] {
    let text: String
    if source == "-" {
        guard let bytes = readStandardInput() else {
            throw IntercomError(.invalidPayload, "cannot read the input from standard input: \(String(cString: strerror(errno)))")
        }
        text = String(decoding: bytes, as: UTF8.self)
    } else {
        guard let data = FileManager.default.contents(atPath: source) else {
            throw IntercomError(.invalidPayload, "cannot read the input file \(source)")
        }
        text = String(decoding: data, as: UTF8.self)
    }
    return text.split(whereSeparator: \.isNewline).map(String.init).filter { !$0.allSatisfy(\.isWhitespace) }
}

/// Checks a number of seconds given on the command line: finite, at least 1 ms,
/// at most a day.
func requireSeconds(_ value: Double, option: String) throws {
    guard value.isFinite, value >= 0.001, value <= 86_400 else {
        throw ValidationError("\(option) must be a number of seconds from 0.001 to 86400 (one day); got \(value)")
    }
}

/// Checks a whole number given on the command line against its allowed range.
func requireCount(_ value: Int, option: String, in range: ClosedRange<Int>) throws {
    guard range.contains(value) else {
        throw ValidationError("\(option) must be a whole number from \(range.lowerBound) to \(range.upperBound); got \(value)")
    }
}

/// `intercom ping SERVICE [--count N]`.
struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure round trips to a service, or check that every service answers (--all).")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "The service's name, or its address (tls://HOST:PORT).") var service: String?
    @Option(help: "How many pings: 1 to 1000000.") var count: Int = 10
    @Flag(help: "Ping every live service once and report who answered and how fast; exits 1 if one did not.")
    var all = false

    func validate() throws {
        try requireCount(self.count, option: "--count", in: 1...1_000_000)
        guard (self.service == nil) == self.all else {
            throw ValidationError(self.all ? "--all pings every service: name none" : "name a service, or ping --all")
        }
    }

    func run() async throws {
        if self.all {
            try await self.pingEveryService()
            return
        }
        try await reportingErrors {
            let service = self.service ?? ""
            let peer = try await self.busOptions.connect(to: service, configuration: self.busOptions.configuration())
            var samples: [Duration] = []
            for index in 1...max(1, self.count) {
                let rtt = try await peer.ping()
                samples.append(rtt)
                print("reply from \(service) (pid \(peer.remote.reportedPID)): seq=\(index) time=\(formatMicroseconds(rtt))")
            }
            await peer.close()
            samples.sort()
            let median = samples[samples.count / 2]
            let p99 = samples[min(samples.count - 1, Int(Double(samples.count) * 0.99))]
            print(
                "\(samples.count) pings: min \(formatMicroseconds(samples[0])), median \(formatMicroseconds(median)), p99 \(formatMicroseconds(p99))"
            )
        }
    }
}

extension Ping {
    /// `--all`: one ping per live service, a line each, sorted by name.
    private func pingEveryService() async throws {
        try await reportingErrors {
            let report = try await self.busOptions.resolve().pingServices()
            for (name, rtt) in report.replies.sorted(by: { $0.key < $1.key }) {
                print("\(name): \(formatMicroseconds(rtt))")
            }
            for (name, error) in report.failures.sorted(by: { $0.key < $1.key }) {
                print("\(name): no answer (\(error.code.name): \(error.message))")
            }
            print("\(report.replies.count) of \(report.replies.count + report.failures.count) services answered")
            if !report.failures.isEmpty { throw ExitCode(1) }
        }
    }
}

func formatMicroseconds(_ duration: Duration) -> String {
    let microseconds = Double(duration.components.seconds) * 1e6 + Double(duration.components.attoseconds) / 1e12
    return fixed(microseconds, 1) + " µs"
}

/// `intercom watch [TOPIC…]`.
struct Watch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print events as they arrive, with time and source (all topics of all live services by default).")

    @OptionGroup var busOptions: BusOptions
    @Argument(help: "Topics to watch (default: all).") var topics: [String] = []
    @Option(help: "Watch only this service (a name, or an address: tls://HOST:PORT).") var service: String?
    @Flag(help: "Print services appearing and leaving instead of events (the live ones first).") var services = false
    @Option(help: "Print this property of --service: its value now, then each change.") var property: String?

    func validate() throws {
        if self.services, self.service != nil || !self.topics.isEmpty {
            throw ValidationError("--services watches the bus itself: name no service or topic")
        }
        if self.property != nil, self.service == nil || !self.topics.isEmpty {
            throw ValidationError("--property watches one service's property: name it with --service, and no topic")
        }
    }

    func run() async throws {
        if let property = self.property, let service = self.service {
            try await reportingErrors {
                let peer = try await self.busOptions.connect(to: service, configuration: self.busOptions.configuration())
                try await watchProperty(property, of: peer)
            }
            return
        }
        if self.services {
            try await reportingErrors {
                let format = Date.ISO8601FormatStyle.iso8601.time(includingFractionalSeconds: true)
                for try await change in try self.busOptions.resolve().serviceChanges() {
                    let time = Date().formatted(format)
                    switch change {
                    case .appeared(let service): printLine("\(time) + \(service.name) (pid \(service.pid))")
                    case .disappeared(let service): printLine("\(time) - \(service.name) (pid \(service.pid))")
                    }
                }
            }
            return
        }
        try await reportingErrors {
            let names = try self.service.map { [$0] } ?? self.busOptions.resolve().services().map(\.name)
            guard !names.isEmpty else {
                throw IntercomError(.serviceNotFound, "no services on bus \(try self.busOptions.resolve().directory)")
            }
            let configuration = try self.busOptions.configuration()
            let topics = self.topics.isEmpty ? ["*"] : self.topics
            try await withThrowingTaskGroup(of: Void.self) { group in
                for name in names {
                    let peer = try await self.busOptions.connect(to: name, configuration: configuration)
                    for topic in topics {
                        let events = peer.jsonEvents(topic)
                        group.addTask {
                            let format = Date.ISO8601FormatStyle.iso8601.time(includingFractionalSeconds: true)
                            do {
                                for try await event in events {
                                    let time = Date().formatted(format)
                                    switch event {
                                    case .event(let topic, let json): printLine("\(time) \(name) \(topic) \(json)")
                                    case .lagged(let missed): printLine("\(time) \(name) (missed \(missed) events)")
                                    }
                                }
                            } catch let error as IntercomError {
                                printLine("\(Date().formatted(format)) \(name) gone: \(error.code)")
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
    }
}

/// `intercom echo [--name NAME]`.
struct Echo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a diagnostic service: echo, sleep, fail and exit methods, and a tick event every second. SIGTERM or SIGINT stops it cleanly.")

    @OptionGroup var busOptions: BusOptions
    @Option(help: "The name to serve under.") var name: String = "echo"
    @Option(help: "Also serve on this address (tls://HOST:PORT with the --tls-* files; tcp:// with --allow-plain-tcp); repeatable.")
    var listen: [String] = []

    func run() async throws {
        try await reportingErrors {
            let bus = try self.busOptions.resolve()
            let name = self.name
            let addresses = try self.listen.map { address throws(IntercomError) in try Endpoint(parsing: address) }
            var configuration = try self.busOptions.configuration()
            configuration.name = name
            let access = AccessPolicy(allowsUnauthenticated: self.busOptions.allowPlainTCP)
            let status = try await untilTerminated { [configuration] in
                try await EchoService.run(on: bus, name: name, configuration: configuration, addresses: addresses, access: access) {
                    service in
                    // Only once the name is ours: a second `intercom echo` fails without claiming to serve.
                    let also = service.addresses.map { " and \($0)" }.joined()
                    progress("serving '\(service.name)' on \(bus.directory)\(also)")
                }
            }
            if status != 0 { throw ExitCode(status) }
        }
    }
}
