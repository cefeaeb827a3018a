import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import IntercomTesting
import MetricsTestKit
import Testing

/// Metrics through swift-metrics, read with its test backend: calls, errors by
/// code, latency, payload bytes and connections on both sides of a real
/// process boundary (the child keeps its own backend and answers `metrics.count`),
/// and restarts of supervised workers.
@Suite(.serialized) struct MetricsTests {
    private static func dimensions(_ service: String, _ side: String, _ method: String) -> [(String, String)] {
        [("service", service), ("side", side), ("method", method)]
    }

    @Test func callsAreCountedTimedAndSizedOnBothSides() async throws {
        try await withResourceCheck {
            let metrics = TestMetrics()
            var configuration = ChildProcess.configuration()
            configuration.name = "metrics-client"
            configuration.metrics = .factory(metrics)
            let child = try await ChildProcess.spawn(.socketpair, arguments: ["--metrics"], configuration: configuration)
            let peer = child.peer
            #expect(try metrics.expectMeter("intercom_connections", [("service", "metrics-client")]).lastValue == 1)

            for n in 1...3 { #expect(try await peer.call("math.add", AddRequest(a: n, b: n), returning: Int.self) == 2 * n) }
            await expectIntercomError(.unknownMethod) { _ = try await peer.call("no.such.method", 0, returning: Int.self) }

            // This side, the caller.
            let add = Self.dimensions("metrics-client", "client", "math.add")
            #expect(metrics.counterTotal(label: "intercom_calls", dimensions: add) == 3)
            let durations = try metrics.expectTimer("intercom_call_duration", add).values
            #expect(durations.count == 3 && durations.allSatisfy { $0 > 0 })
            #expect(metrics.counterTotal(label: "intercom_payload_bytes", dimensions: add + [("direction", "out")]) > 0)
            #expect(metrics.counterTotal(label: "intercom_payload_bytes", dimensions: add + [("direction", "in")]) > 0)
            let missing = Self.dimensions("metrics-client", "client", "no.such.method")
            #expect(metrics.counterTotal(label: "intercom_call_errors", dimensions: missing + [("code", "unknownMethod")]) == 1)
            #expect(metrics.counterTotal(label: "intercom_call_errors", dimensions: add + [("code", "unknownMethod")]) == 0)

            // The other process, the server: the same calls, and a made-up method counted as "(unknown)".
            func served(_ method: String, code: String? = nil) async throws -> Int64 {
                var dimensions = Self.dimensions("test-helper", "server", method)
                if let code { dimensions.append(("code", code)) }
                let label = code == nil ? "intercom_calls" : "intercom_call_errors"
                return try await peer.call("metrics.count", CounterQuery(label: label, dimensions: dimensions), returning: Int64.self)
            }
            #expect(try await served("math.add") == 3)
            #expect(try await served("(unknown)", code: "unknownMethod") == 1)
            #expect(try await served("no.such.method") == 0, "a stranger's method names do not become metrics")

            await child.shutdown()
            #expect(try metrics.expectMeter("intercom_connections", [("service", "metrics-client")]).lastValue == 0)
        }
    }

    @Test func restartsOfSupervisedWorkersAreCounted() async throws {
        try await withResourceCheck {
            let metrics = TestMetrics()
            let supervisor = Supervisor(metrics: .factory(metrics))
            supervisor.start("flaky", helperSpec(["--exit-after-handshake", "3"]), policy: .onFailure(backoff: .milliseconds(10)))
            async let supervising: Void = supervisor.run()
            var restarts = 0
            for await event in supervisor.events {
                if case .restarting = event { restarts += 1 }
                if restarts == 2 { break }
            }
            await supervisor.stopAll()
            await supervising
            #expect(metrics.counterTotal(label: "intercom_worker_restarts", dimensions: [("worker", "flaky")]) >= 2)
        }
    }

    /// Queue depths as meters per service: calls waiting for their reply, handlers
    /// running, calls queued behind the concurrency limit — exact on the
    /// in-memory transport with handlers on its loop, and back to zero after.
    @Test func queueDepthsAreMeters() async throws {
        try await withResourceCheck {
            let gates = Gates()
            let router = Router()
            try router.register("slow") { (id: Int, _: CallContext) -> Int in
                await gates.pass(id)
                return id
            }
            let (clientMetrics, serverMetrics) = (TestMetrics(), TestMetrics())
            var client = Peer.Configuration(name: "depths-client")
            client.metrics = .factory(clientMetrics)
            var server = Peer.Configuration(name: "depths")
            server.handlerExecution = .connectionThread
            server.maxConcurrentHandlers = 1
            server.metrics = .factory(serverMetrics)
            let connection = try await InMemoryConnection.open(second: router, configuration: client, secondConfiguration: server)
            let caller = connection.first
            let calls = (1...3).map { id in Task(executorPreference: caller.executor) { try await caller.call("slow", id, returning: Int.self) } }
            await connection.settle()
            func meter(_ metrics: TestMetrics, _ label: String, _ service: String) throws -> Double {
                try metrics.expectMeter(label, [("service", service)]).lastValue ?? 0
            }
            #expect(try meter(clientMetrics, "intercom_pending_calls", "depths-client") == 3)
            #expect(try meter(serverMetrics, "intercom_running_handlers", "depths") == 1)
            #expect(try meter(serverMetrics, "intercom_queued_calls", "depths") == 2)
            for id in 1...3 {
                await gates.open(id)
                #expect(try await calls[id - 1].value == id)
            }
            await connection.settle()
            #expect(try meter(clientMetrics, "intercom_pending_calls", "depths-client") == 0)
            #expect(try meter(serverMetrics, "intercom_running_handlers", "depths") == 0)
            #expect(try meter(serverMetrics, "intercom_queued_calls", "depths") == 0)
            await connection.close()
        }
    }
}
