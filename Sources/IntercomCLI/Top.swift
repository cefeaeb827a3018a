import ArgumentParser
import Histogram
import Intercom
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `intercom top`: per service (or method), live call rates, latency
/// percentiles, errors and connections, refreshed every interval.
struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show live call rates, p50/p99 latency, errors and connections per service (or per method).",
        discussion: "Attaches to each service like `intercom monitor` (sizes only, no payloads). Latencies are the handlers' own, over the last interval.")

    @OptionGroup var busOptions: BusOptions
    @Option(name: .customLong("service"), help: "Watch only this service (repeatable).") var services: [String] = []
    @Flag(name: .customLong("by-method"), help: "One row per method instead of per service.") var byMethod = false
    @Option(help: "Seconds between refreshes.") var interval: Double = 1
    @Option(help: "Stop after this many refreshes.") var count: Int?
    @Flag(help: "One JSON object per refresh instead of a table.") var json = false

    func validate() throws {
        guard self.interval >= 0.05, self.interval <= 3600 else { throw ValidationError("--interval is 0.05 to 3600 seconds") }
        if let count = self.count, count < 1 { throw ValidationError("--count is at least 1") }
    }

    func run() async throws {
        try await reportingErrors {
            let bus = try self.busOptions.resolve()
            let configuration = try self.busOptions.configuration()
            let table = TopTable(byMethod: self.byMethod)
            let (wanted, interval, count, json) = (Set(self.services), self.interval, self.count, self.json)
            let stop = Mutex<(@Sendable () -> Void)?>(nil)
            try await untilTerminated {
                await followTraffic(
                    on: bus, wanted: wanted, configuration: configuration, request: MonitorRequest(payloadBytes: 0), duration: nil,
                    stopper: { finish in stop.withLock { $0 = finish } },
                    also: {
                        var refreshes = 0
                        var last = ContinuousClock.now
                        while !Task.isCancelled {
                            try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                            let now = ContinuousClock.now
                            let rows = table.takeInterval(seconds: (now - last) / .seconds(1))
                            last = now
                            printLine(json ? TopTable.json(rows) : TopTable.text(rows))
                            refreshes += 1
                            if let count, refreshes >= count {
                                stop.withLock { $0 }?()
                                return
                            }
                        }
                    }
                ) { batch, info, _ in
                    table.add(batch, from: info.name)
                }
            }
        }
    }
}

/// The counts behind `intercom top`: per row an HDR histogram of handler
/// latencies for the current interval, and running totals.
final class TopTable: Sendable {
    struct Row: Sendable {
        var service: String
        var method: String?
        var callsPerSecond: Double
        var errorsPerSecond: Double
        var p50: UInt64
        var p99: UInt64
        var max: UInt64
        var totalCalls: Int
        var totalErrors: Int
        var connections: Int?
    }

    private struct Counts {
        var latencies = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)
        var calls = 0
        var errors = 0
        var totalCalls = 0
        var totalErrors = 0
    }

    private struct State {
        var rows: [String: (service: String, method: String?, counts: Counts)] = [:]
        var connections: [String: Int] = [:]
    }

    private let byMethod: Bool
    private let state = Mutex(State())

    init(byMethod: Bool) { self.byMethod = byMethod }

    func add(_ batch: TrafficBatch, from service: String) {
        self.state.withLock { state in
            if let connections = batch.connections { state.connections[service] = connections }
            if state.rows[service] == nil && !self.byMethod { state.rows[service] = (service, nil, Counts()) }
            for record in batch.records where record.kind != .event {
                let key = self.byMethod ? "\(service) \(record.method)" : service
                var row = state.rows[key] ?? (service, self.byMethod ? record.method : nil, Counts())
                row.counts.calls += 1
                row.counts.totalCalls += 1
                if record.error != nil {
                    row.counts.errors += 1
                    row.counts.totalErrors += 1
                }
                if let microseconds = record.microseconds { _ = row.counts.latencies.record(UInt64(max(1, microseconds))) }
                state.rows[key] = row
            }
        }
    }

    /// The rows for the interval just ended (sorted by calls, busiest first); starts the next interval.
    func takeInterval(seconds: Double) -> [Row] {
        self.state.withLock { state in
            var rows: [Row] = []
            for key in state.rows.keys {
                var entry = state.rows[key]!
                let latencies = entry.counts.latencies
                let empty = latencies.totalCount == 0
                rows.append(
                    Row(
                        service: entry.service, method: entry.method, callsPerSecond: Double(entry.counts.calls) / max(seconds, 0.001),
                        errorsPerSecond: Double(entry.counts.errors) / max(seconds, 0.001),
                        p50: empty ? 0 : latencies.valueAtPercentile(50), p99: empty ? 0 : latencies.valueAtPercentile(99),
                        max: empty ? 0 : latencies.maxRecorded, totalCalls: entry.counts.totalCalls, totalErrors: entry.counts.totalErrors,
                        connections: state.connections[entry.service]))
                entry.counts.calls = 0
                entry.counts.errors = 0
                entry.counts.latencies.reset()
                state.rows[key] = entry
            }
            return rows.sorted { ($0.callsPerSecond, $1.service, $1.method ?? "") > ($1.callsPerSecond, $0.service, $0.method ?? "") }
        }
    }

    static func text(_ rows: [Row]) -> String {
        let byMethod = rows.contains { $0.method != nil }
        let header = ["SERVICE"] + (byMethod ? ["METHOD"] : []) + ["CONNS", "CALLS/S", "ERR/S", "P50", "P99", "MAX", "CALLS", "ERRORS"]
        let cells = rows.map { row in
            [row.service] + (byMethod ? [row.method ?? ""] : [])
                + [
                    row.connections.map(String.init) ?? "-", fixed(row.callsPerSecond, 1), fixed(row.errorsPerSecond, 1),
                    latency(row.p50), latency(row.p99), latency(row.max), String(row.totalCalls), String(row.totalErrors),
                ]
        }
        let widths = header.indices.map { column in ([header] + cells).map { $0[column].count }.max() ?? 0 }
        let time = Date().formatted(Date.ISO8601FormatStyle.iso8601.time(includingFractionalSeconds: false))
        let lines = ([header] + cells).map { row in
            row.enumerated().map { index, cell in index == 0 || (byMethod && index == 1) ? left(cell, widths[index]) : right(cell, widths[index]) }
                .joined(separator: "  ")
        }
        return ([time] + (rows.isEmpty ? ["(no services)"] : lines)).joined(separator: "\n") + "\n"
    }

    private static func latency(_ microseconds: UInt64) -> String {
        microseconds == 0 ? "-" : formatMicroseconds(Int64(microseconds))
    }

    static func json(_ rows: [Row]) -> String {
        let items = rows.map { row in
            var fields = ["\"service\":\(jsonString(row.service))"]
            if let method = row.method { fields.append("\"method\":\(jsonString(method))") }
            if let connections = row.connections { fields.append("\"connections\":\(connections)") }
            fields += [
                "\"callsPerSecond\":\(fixed(row.callsPerSecond, 3))", "\"errorsPerSecond\":\(fixed(row.errorsPerSecond, 3))",
                "\"p50Microseconds\":\(row.p50)", "\"p99Microseconds\":\(row.p99)", "\"maxMicroseconds\":\(row.max)",
                "\"totalCalls\":\(row.totalCalls)", "\"totalErrors\":\(row.totalErrors)",
            ]
            return "{" + fields.joined(separator: ",") + "}"
        }
        return "{\"time\":\(jsonString(Date().formatted(.iso8601))),\"rows\":[\(items.joined(separator: ","))]}"
    }
}
