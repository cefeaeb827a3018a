import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing

/// The snippets of docs/coming-from/multiprocessing.md, run against real
/// worker processes (the test helper, whose router has `math.add`).
@Suite(.serialized) struct ComingFromMultiprocessingTests {
    @Test func aProcessWithAPipe() async throws {
        try await withResourceCheck {
            let workerPath = ChildProcess.helperPath
            // guide: process
            let sum = try await Worker.withWorker(WorkerSpec(executablePath: workerPath)) { worker in
                try await worker.peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self)
            }
            #expect(sum == 5)  // the worker was stopped (goodbye, then SIGTERM if need be) and reaped
            // end guide
        }
    }

    @Test func aPoolMap() async throws {
        try await withResourceCheck {
            let workerPath = ChildProcess.helperPath
            // guide: pool
            let sums = try await Worker.withWorker(WorkerSpec(executablePath: workerPath)) { worker in
                try await withThrowingTaskGroup(of: (Int, Int).self) { group in
                    for n in 0..<100 {
                        group.addTask { (n, try await worker.peer.call("math.add", AddRequest(a: n, b: n), returning: Int.self)) }
                    }
                    // The calls run concurrently in the worker (64 handlers at a time by default).
                    return try await group.reduce(into: [Int](repeating: 0, count: 100)) { $0[$1.0] = $1.1 }
                }
            }
            #expect(sums == (0..<100).map { $0 * 2 })
            // end guide
        }
    }

    @Test func aQueue() async throws {
        try await withResourceCheck {
            // guide: queue
            struct Job: Codable, Sendable { var id: Int; var path: String }
            let (producer, consumer) = try await Peer.pair()
            for id in 1...3 { try await producer.send("jobs", Job(id: id, path: "/tmp/\(id).raw")) }
            var done: [Int] = []
            for try await job in consumer.messages(as: Job.self) {
                done.append(job.id)
                if done.count == 3 { break }
            }
            #expect(done == [1, 2, 3])
            // end guide
            await producer.close()
            await consumer.close()
        }
    }

    @Test func sharedState() async throws {
        try await withResourceCheck {
            // guide: shared state
            let router = Router()
            let counter = try router.property("counter", initial: 0) { value in
                guard value >= 0 else { throw IntercomError(.invalidPayload, "the counter cannot go below 0") }
            }
            let (client, service) = try await Peer.pair(routers: (nil, router))
            try await client.setProperty("counter", to: 5)
            #expect(try await client.property("counter", as: Int.self) == 5)
            #expect(counter.value == 5)
            await #expect(throws: IntercomError.self) { try await client.setProperty("counter", to: -1) }
            // end guide
            await client.close()
            await service.close()
        }
    }
}
