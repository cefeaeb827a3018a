import Intercom
import IntercomTestSupport
import IntercomTesting
import Testing

/// epyrpc's worker count per API: a namespace's handlers run at most N at a
/// time across every connection of the router, the rest wait in order and keep
/// their deadlines. Handlers run on the connection's loop (virtual time), so
/// the pool's counts are exact after `settle()`.
@Suite struct WorkerCountTests {
    @Test func aNamespaceRunsAtMostItsWorkersAndTheRestWaitInOrder() async throws {
        try await withResourceCheck {
            let gates = Gates()
            let router = Router()
            let camera = try router.namespace("camera")
            try camera.register("shoot") { (id: Int, _: CallContext) -> Int in
                await gates.pass(id)
                return id
            }
            try router.register("other.ping") { (value: Int, _: CallContext) in value }
            try camera.setWorkers(2)
            await expectIntercomError(.invalidConfiguration) { try camera.setWorkers(0) }

            let connection = try await InMemoryConnection.open(second: router, configuration: Self.onTheLoop)
            let caller = connection.first
            let calls = (1...6).map { id in
                Task(executorPreference: caller.executor) { try await caller.call("camera.shoot", id, returning: Int.self) }
            }
            await connection.settle()
            #expect(camera.workerStatus == WorkerPoolStatus(workers: 2, busy: 2, waiting: 4))
            #expect(connection.second.statistics.runningHandlers == 6, "waiting calls hold their connection's handler slots")
            // Methods outside the namespace are not held up.
            #expect(try await caller.call("other.ping", 7, returning: Int.self) == 7)

            // Each finished call lets the next waiting one in, in arrival order.
            var finished: [Int] = []
            for id in 1...6 {
                await gates.open(id)
                finished.append(try await calls[id - 1].value)
                let left = 6 - id
                #expect(camera.workerStatus == WorkerPoolStatus(workers: 2, busy: min(2, left), waiting: max(0, left - 2)))
            }
            #expect(finished == [1, 2, 3, 4, 5, 6])
            #expect(await gates.entered == [1, 2, 3, 4, 5, 6])
            #expect(await gates.mostAtOnce == 2)
            await connection.close()
        }
    }

    @Test func aWaitingCallKeepsItsDeadlineAndCanBeCancelled() async throws {
        try await withResourceCheck {
            let gates = Gates()
            let router = Router()
            try router.register("camera.shoot") { (id: Int, _: CallContext) -> Int in
                await gates.pass(id)
                return id
            }
            try router.setWorkers(1, forNamespace: "camera")
            let connection = try await InMemoryConnection.open(second: router, configuration: Self.onTheLoop)
            let caller = connection.first
            func shoot(_ id: Int, timeout: Duration) -> Task<Int, any Error> {
                Task(executorPreference: caller.executor) { try await caller.call("camera.shoot", id, returning: Int.self, timeout: timeout) }
            }
            let running = shoot(1, timeout: .seconds(60))
            let overdue = shoot(2, timeout: .milliseconds(200))
            let abandoned = shoot(3, timeout: .seconds(60))
            let patient = shoot(4, timeout: .seconds(60))
            await connection.settle()
            #expect(router.workerStatus(forNamespace: "camera") == WorkerPoolStatus(workers: 1, busy: 1, waiting: 3))

            await connection.advanceTime(by: .milliseconds(200))
            let late = await #expect(throws: IntercomError.self) { try await overdue.value }
            #expect(late?.code == .timeout)
            #expect(router.workerStatus(forNamespace: "camera")?.waiting == 2, "the overdue call left the queue")

            abandoned.cancel()
            let gone = await #expect(throws: IntercomError.self) { try await abandoned.value }
            #expect(gone?.code == .cancelled)
            await connection.settle()
            #expect(router.workerStatus(forNamespace: "camera") == WorkerPoolStatus(workers: 1, busy: 1, waiting: 1))

            await gates.open(1)
            await gates.open(4)
            #expect(try await running.value == 1)
            #expect(try await patient.value == 4)
            #expect(await gates.entered == [1, 4], "calls that left the queue never ran")
            await connection.close()
        }
    }

    @Test func theCountHoldsAcrossConnectionsAndCanChange() async throws {
        try await withResourceCheck {
            let gates = Gates()
            let router = Router()
            try router.register("db.write") { (id: Int, _: CallContext) -> Int in
                await gates.pass(id)
                return id
            }
            try router.setWorkers(1, forNamespace: "db")
            let a = try await InMemoryConnection.open(second: router, configuration: Self.onTheLoop)
            let b = try await InMemoryConnection.open(second: router, configuration: Self.onTheLoop)
            let first = Task(executorPreference: a.first.executor) { try await a.first.call("db.write", 1, returning: Int.self) }
            await a.settle()
            let second = Task(executorPreference: b.first.executor) { try await b.first.call("db.write", 2, returning: Int.self) }
            let third = Task(executorPreference: b.first.executor) { try await b.first.call("db.write", 3, returning: Int.self) }
            await b.settle()
            #expect(router.workerStatus(forNamespace: "db") == WorkerPoolStatus(workers: 1, busy: 1, waiting: 2))

            // A larger count starts waiting calls at once.
            try router.setWorkers(3, forNamespace: "db")
            #expect(router.workerStatus(forNamespace: "db") == WorkerPoolStatus(workers: 3, busy: 3, waiting: 0))
            for id in 1...3 { await gates.open(id) }
            #expect(try await [first.value, second.value, third.value] == [1, 2, 3])

            try router.setWorkers(nil, forNamespace: "db")
            #expect(router.workerStatus(forNamespace: "db") == nil)
            await a.close()
            await b.close()
        }
    }

    private static var onTheLoop: Peer.Configuration {
        var configuration = Peer.Configuration()
        configuration.handlerExecution = .connectionThread
        return configuration
    }
}

/// Handlers wait at a gate the test opens, one per call id; the gates record
/// who entered and how many were inside at once.
actor Gates {
    private var waiting: [Int: CheckedContinuation<Void, Never>] = [:]
    private var opened: Set<Int> = []
    private var inside = 0
    private(set) var mostAtOnce = 0
    private(set) var entered: [Int] = []

    func pass(_ id: Int) async {
        self.entered.append(id)
        self.inside += 1
        self.mostAtOnce = max(self.mostAtOnce, self.inside)
        if !self.opened.contains(id) {
            await withCheckedContinuation { self.waiting[id] = $0 }
        }
        self.inside -= 1
    }

    func open(_ id: Int) {
        self.opened.insert(id)
        self.waiting.removeValue(forKey: id)?.resume()
    }
}
