import ArgumentParser
import Intercom
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `intercom monitor`: the calls, replies, errors, messages and events of the
/// services on the bus, as they happen, with payloads decoded.
struct Monitor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the traffic of the services on the bus live: calls with their replies or errors, messages and events, payloads decoded.",
        discussion: """
            Each service copies what it serves to the monitors attached to it (`intercom.monitor`), into a bounded \
            queue per monitor: a monitor that falls behind loses records (shown as such), never slows a service. \
            Binary payloads are decoded with the service's schema (`intercom describe`). Services that start later \
            are picked up as they appear.
            """)

    @OptionGroup var busOptions: BusOptions
    @Option(name: .customLong("service"), help: "Watch only this service (repeatable).") var services: [String] = []
    @Option(name: .customLong("method"), help: "Show only methods (or topics) starting with this (repeatable).") var methods: [String] = []
    @Flag(help: "One JSON object per line instead of text.") var json = false
    @Option(help: "How many bytes of each payload to fetch and decode (0: sizes only; at most 16384).") var payloadBytes = 4096
    @Option(help: "Stop after this many records.") var count: Int?
    @Option(help: "Stop after this many seconds.") var duration: Double?

    func validate() throws {
        guard (0...MonitorRequest.maxPayloadBytes).contains(self.payloadBytes) else {
            throw ValidationError("--payload-bytes is 0 to \(MonitorRequest.maxPayloadBytes) (what a service copies at most); got \(self.payloadBytes)")
        }
        if let count = self.count, count < 1 { throw ValidationError("--count is at least 1") }
        if let duration = self.duration { try requireSeconds(duration, option: "--duration") }
    }

    func run() async throws {
        try await reportingErrors {
            let bus = try self.busOptions.resolve()
            let configuration = try self.busOptions.configuration()
            let printer = TrafficPrinter(json: self.json, methods: self.methods, limit: self.count)
            let request = MonitorRequest(payloadBytes: self.payloadBytes)
            let (wanted, duration) = (Set(self.services), self.duration)
            try await untilTerminated {
                await followTraffic(
                    on: bus, wanted: wanted, configuration: configuration, request: request, duration: duration,
                    stopper: { stop in printer.onDone(stop) }
                ) { batch, info, schema in
                    printer.show(batch, from: info.name, schema: schema)
                }
            }
        }
    }
}

/// Follows the traffic of the services on `bus` (those in `wanted`, if any;
/// new ones as they appear) until `duration` passes or the function given to
/// `stopper` is called, handing each batch to `handle`.
func followTraffic(
    on bus: Bus, wanted: Set<String>, configuration: Peer.Configuration, request: MonitorRequest, duration: Double?,
    stopper: (@escaping @Sendable () -> Void) -> Void, also: (@Sendable () async -> Void)? = nil,
    handle: @escaping @Sendable (TrafficBatch, ServiceInfo, ServiceSchema?) -> Void
) async {
    let (appeared, found) = AsyncStream.makeStream(of: ServiceInfo.self)
    stopper { found.finish() }
    await withTaskGroup(of: Void.self) { group in
        group.addTask {
            do {
                for try await change in bus.serviceChanges() {
                    guard case .appeared(let info) = change, wanted.isEmpty || wanted.contains(info.name) else { continue }
                    found.yield(info)
                }
            } catch {
                progress("error: \(error)")
            }
            found.finish()
        }
        if let duration {
            group.addTask {
                try? await Task.sleep(for: .milliseconds(Int(duration * 1000)))
                found.finish()
            }
        }
        if let also { group.addTask { await also() } }
        for await info in appeared {
            group.addTask { await followService(info, on: bus, configuration: configuration, request: request, handle: handle) }
        }
        group.cancelAll()
    }
}

/// Streams one service's traffic to `handle` until the service leaves or the follower stops.
private func followService(
    _ info: ServiceInfo, on bus: Bus, configuration: Peer.Configuration, request: MonitorRequest,
    handle: @escaping @Sendable (TrafficBatch, ServiceInfo, ServiceSchema?) -> Void
) async {
    do {
        let peer = try await bus.connect(to: info.name, configuration: configuration)
        defer { Task { await peer.close() } }
        // A monitor watches for as long as it runs: the longest deadline there is.
        let batches = peer.stream(Router.monitorMethod, request, of: TrafficBatch.self, timeout: .seconds(1 << 32))
        var iterator = batches.makeAsyncIterator()
        guard let first = try await iterator.next() else { return }
        // Asked once attached: the service no longer shows this connection's calls to other monitors.
        let schema =
            request.payloadBytes > 0 ? try? await peer.call("intercom.describe", 0, returning: ServiceSchema.self, timeout: .seconds(10)) : nil
        progress("monitoring \(info.name) (pid \(info.pid))")
        handle(first, info, schema)
        while let batch = try await iterator.next() { handle(batch, info, schema) }
    } catch let error as IntercomError where error.code == .peerLost || error.code == .cancelled || error.code == .closed {
        return
    } catch let error as IntercomError where error.code == .unknownMethod {
        progress("\(info.name) cannot be monitored: it is built with an Intercom older than the monitor (no intercom.monitor)")
    } catch {
        if !Task.isCancelled { progress("\(info.name): \(error)") }
    }
}

/// Prints records as text or JSON lines, one at a time, and counts them against `--count`.
final class TrafficPrinter: Sendable {
    private let json: Bool
    private let methods: [String]
    private let limit: Int?
    private struct State {
        var printed = 0
        var done: (@Sendable () -> Void)?
        var finished = false
    }
    private let state = Mutex(State())

    init(json: Bool, methods: [String], limit: Int?) {
        self.json = json
        self.methods = methods
        self.limit = limit
    }

    func onDone(_ done: @escaping @Sendable () -> Void) { self.state.withLock { $0.done = done } }

    func show(_ batch: TrafficBatch, from service: String, schema: ServiceSchema?) {
        if batch.dropped > 0 {
            self.emit(
                self.json
                    ? "{\"dropped\":\(batch.dropped),\"service\":\(jsonString(service))}"
                    : "\(service): \(batch.dropped) records dropped (this monitor fell behind)", counts: false)
        }
        for record in batch.records where self.methods.isEmpty || self.methods.contains(where: { record.method.hasPrefix($0) }) {
            self.emit(self.json ? Self.jsonLine(record, schema) : Self.textLine(record, schema), counts: true)
        }
    }

    private func emit(_ line: String, counts: Bool) {
        let (print, done) = self.state.withLock { state -> (Bool, (@Sendable () -> Void)?) in
            guard !state.finished else { return (false, nil) }
            if counts { state.printed += 1 }
            if let limit = self.limit, state.printed >= limit {
                state.finished = true
                return (true, state.done)
            }
            return (true, nil)
        }
        if print { printLine(line) }
        done?()
    }

    static func textLine(_ record: TrafficRecord, _ schema: ServiceSchema?) -> String {
        let time = record.time.formatted(Date.ISO8601FormatStyle.iso8601.time(includingFractionalSeconds: true))
        let method = schema?.method(record.method)
        switch record.kind {
        case .event:
            return "\(time) event \(record.service) \(record.method) \(record.requestBytes) B \(decoded(record.request, record.requestBytes, record.codec, method?.result, schema))"
        case .call, .message:
            let from = "\(record.caller.isEmpty ? "?" : record.caller)[\(record.callerPID.map(String.init) ?? "?")]"
            let took = record.microseconds.map { " \(formatMicroseconds($0))" } ?? ""
            let argument = decoded(record.request, record.requestBytes, record.codec, method?.argument, schema)
            var line = "\(time) \(record.kind.rawValue) \(from) → \(record.service) \(record.method)\(took) \(argument)"
            if let error = record.error {
                line += " ✗ \(error)"
            } else if record.kind == .call {
                line += " → " + decoded(record.reply, record.replyBytes ?? 0, record.codec, method?.result, schema)
            }
            return line
        }
    }

    static func jsonLine(_ record: TrafficRecord, _ schema: ServiceSchema?) -> String {
        let method = schema?.method(record.method)
        var fields: [(String, String)] = [
            ("time", jsonString(record.time.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)))), ("kind", jsonString(record.kind.rawValue)), ("service", jsonString(record.service)),
            ("method", jsonString(record.method)), ("codec", jsonString(record.codec)), ("requestBytes", String(record.requestBytes)),
        ]
        if !record.caller.isEmpty { fields.append(("caller", jsonString(record.caller))) }
        if let pid = record.callerPID { fields.append(("callerPID", String(pid))) }
        if let microseconds = record.microseconds { fields.append(("microseconds", String(microseconds))) }
        let argumentShape = record.kind == .event ? nil : method?.argument
        if let json = decodedJSON(record.request, record.requestBytes, record.codec, argumentShape, schema) { fields.append(("request", json)) }
        if let bytes = record.replyBytes { fields.append(("replyBytes", String(bytes))) }
        if let json = decodedJSON(record.reply, record.replyBytes ?? 0, record.codec, method?.result, schema) { fields.append(("reply", json)) }
        if let error = record.error { fields.append(("error", jsonString(error))) }
        return "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// A payload as text: its JSON when it can be read, else its size.
private func decoded(_ bytes: [UInt8]?, _ size: Int, _ codec: String, _ shape: WireShape?, _ schema: ServiceSchema?) -> String {
    decodedJSON(bytes, size, codec, shape, schema) ?? "(\(size) B)"
}

/// A payload as JSON: JSON payloads as they are, binary ones through the schema; nil when neither works
/// (no payload fetched, cut short, no schema, a custom codec).
private func decodedJSON(_ bytes: [UInt8]?, _ size: Int, _ codec: String, _ shape: WireShape?, _ schema: ServiceSchema?) -> String? {
    guard let bytes, bytes.count == size, size > 0 else { return nil }
    switch codec {
    case "json":
        return String(decoding: bytes, as: UTF8.self)
    case "binary":
        guard let shape, let schema else { return nil }
        return try? BinaryPayloadRenderer(types: schema.types).render(bytes, as: shape)
    default:
        return nil
    }
}
