import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `intercom monitor` end to end: three processes — the test calling, a helper
/// serving, the monitor watching the two of them.
@Suite(.serialized) struct MonitorTests {
    @Test func aMonitorShowsCallsBetweenOtherProcessesWithDecodedPayloads() async throws {
        try await withTypedService { temporary, service, peer in
            let (_, out, err, exit) = try startCLI(
                ["monitor", "--json", "--service", "typed", "--method", "math.", "--count", "4"], busDirectory: temporary.directory)
            let attached = await readOutput(of: err, until: "monitoring typed")
            #expect(attached.contains("monitoring typed (pid \(service.pid))"))

            #expect(try await peer.call("peer.pid", 0, returning: Int.self) == Int(service.pid))  // not shown: --method math.
            #expect(try await peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            #expect(try await peer.callJSON("math.add", json: #"{"a":40,"b":2}"#) == "42")
            await #expect(throws: IntercomError.self) { try await peer.call("math.add", "not a request", returning: Int.self) }
            try await peer.send("math.note", AddRequest(a: 1, b: 1))  // no handler: the service's inbox

            let output = String(decoding: await onThread { out.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
            for await status in exit { #expect(status == 0) }
            try? out.fileHandleForReading.close()
            try? err.fileHandleForReading.close()

            let lines = output.split(separator: "\n").map { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
            }
            #expect(lines.count == 4, "\(output)")
            guard lines.count == 4 else { return }
            // The binary codec's payloads, decoded with the service's schema.
            #expect(lines[0]["codec"] as? String == "binary")
            #expect(lines[0]["method"] as? String == "math.add")
            #expect(lines[0]["callerPID"] as? Int == Int(getpid()))
            #expect(lines[0]["request"] as? [String: Int] == ["a": 2, "b": 3])
            #expect(lines[0]["reply"] as? Int == 5)
            #expect(lines[0]["microseconds"] is Int)
            // JSON payloads as they were sent.
            #expect(lines[1]["codec"] as? String == "json")
            #expect(lines[1]["request"] as? [String: Int] == ["a": 40, "b": 2])
            #expect(lines[1]["reply"] as? Int == 42)
            // A failed call shows the error the caller got.
            #expect((lines[2]["error"] as? String)?.hasPrefix("invalidPayload") == true, "\(lines[2])")
            // A one-way message to the inbox: its size (no schema to decode it with).
            #expect(lines[3]["kind"] as? String == "message")
            #expect(lines[3]["method"] as? String == "math.note")
            #expect((lines[3]["requestBytes"] as? Int ?? 0) > 0)
        }
    }

    /// `intercom top` counts calls and errors per service with latency
    /// percentiles and the client connections (monitors not counted).
    @Test func topShowsRatesLatenciesErrorsAndConnections() async throws {
        try await withTypedService { temporary, service, peer in
            let (top, out, err, exit) = try startCLI(
                ["top", "--json", "--service", "typed", "--interval", "0.2"], busDirectory: temporary.directory)
            _ = await readOutput(of: err, until: "monitoring typed")
            for value in 0..<20 { #expect(try await peer.call("math.add", AddRequest(a: value, b: 1), returning: Int.self) == value + 1) }
            await #expect(throws: IntercomError.self) { try await peer.call("fail.typed", "no", returning: Int.self) }
            let shown = String(decoding: await readBytes(of: out, until: #""totalCalls":21,"totalErrors":1}"#), as: UTF8.self)
            async let rest = onThread { out.fileHandleForReading.readDataToEndOfFile() }
            top.terminate()
            for await _ in exit {}
            _ = await rest
            try? out.fileHandleForReading.close()
            try? err.fileHandleForReading.close()

            let refresh = try #require(shown.split(separator: "\n").last { $0.contains(#""totalCalls":21"#) })
            let object = try #require(try JSONSerialization.jsonObject(with: Data(refresh.utf8)) as? [String: Any])
            let row = try #require((object["rows"] as? [[String: Any]])?.first)
            #expect(row["service"] as? String == "typed")
            #expect(row["connections"] as? Int == 1)
            #expect(row["totalErrors"] as? Int == 1)
            #expect((row["p99Microseconds"] as? Int ?? 0) >= (row["p50Microseconds"] as? Int ?? 0))
            #expect((row["maxMicroseconds"] as? Int ?? 0) > 0 || (row["callsPerSecond"] as? Double) == 0)
        }
    }

    /// A monitor that stops reading (SIGSTOP) costs the service nothing: calls
    /// keep being answered while the monitor's queue fills, and what did not fit
    /// is reported as dropped once it reads again.
    @Test func aStoppedMonitorDoesNotSlowTheService() async throws {
        try await withTypedService { temporary, service, peer in
            let (monitor, out, err, exit) = try startCLI(
                ["monitor", "--service", "typed", "--payload-bytes", "4096"], busDirectory: temporary.directory)
            _ = await readOutput(of: err, until: "monitoring typed")
            kill(monitor.processIdentifier, SIGSTOP)

            let payload = [UInt8](repeating: 7, count: 2048)
            // More than the queue (1,024) plus what the stream's credit and the socket hold.
            for _ in 0..<3000 {
                #expect(try await peer.call("echo.bytes", payload, returning: [UInt8].self, timeout: .seconds(20)).count == 2048)
            }
            kill(monitor.processIdentifier, SIGCONT)
            let shown = String(decoding: await readBytes(of: out, until: "records dropped"), as: UTF8.self)
            #expect(shown.contains("typed: "), "\(shown.suffix(500))")
            #expect(shown.contains("records dropped (this monitor fell behind)"))
            #expect(shown.contains("echo.bytes"))

            // Read on to the end: a monitor blocked on a full pipe would not get to its SIGTERM handling.
            async let rest = onThread { out.fileHandleForReading.readDataToEndOfFile() }
            monitor.terminate()
            for await _ in exit {}
            _ = await rest
            try? out.fileHandleForReading.close()
            try? err.fileHandleForReading.close()
        }
    }
}

/// Runs `body` with the test helper serving `typed` on a temporary bus and a
/// connection to it, then asks the service to quit and checks that it exited cleanly.
func withTypedService(_ body: (TemporaryBus, ServiceProcess, Peer) async throws -> Void) async throws {
    try await withResourceCheck {
        try await withTemporaryBus { temporary in
            let service = try ServiceProcess(name: "typed", bus: temporary)
            _ = try await temporary.bus.waitForService("typed", timeout: .seconds(20))
            let peer = try await temporary.bus.connect(to: "typed")
            try await body(temporary, service, peer)
            #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
            await peer.close()
            #expect(await service.waitForExit() == 0)
        }
    }
}

/// What `pipe` gives until `marker` appears (or its end), looking for the marker
/// only in what is new: the monitor prints megabytes here.
private func readBytes(of pipe: Pipe, until marker: String) async -> Data {
    await onThread {
        var collected = Data()
        let needle = Data(marker.utf8)
        while true {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            let searchFrom = max(0, collected.count - needle.count)
            collected.append(chunk)
            if collected[searchFrom...].range(of: needle) != nil { break }
        }
        return collected
    }
}
