// Two processes talking through distributed actors.
//
//     swift run actors-example
//
// The parent spawns this same executable as a worker; the worker hosts a
// `Calculator` (an implementation the parent never sees — it only knows the
// protocol from IntercomActorExample) and the parent calls it through the
// `$Calculator` stub over the socket pair that connects them.
import Distributed
import Intercom
import IntercomActorExample

/// The implementation, hosted by the worker process.
distributed actor CalculatorService: Calculator {
    typealias ActorSystem = IntercomActorSystem

    distributed func add(_ a: Int, _ b: Int) -> Int { a + b }

    distributed func divide(_ a: Int, by b: Int) throws -> Int {
        guard b != 0 else { throw CalculatorError.divisionByZero(dividend: a) }
        return a / b
    }

    distributed func wait(milliseconds: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(milliseconds))
        return milliseconds
    }

    distributed func failPlainly() throws {
        throw IntercomError(.remote, "this one is not Codable")
    }
}

if Peer.workerRole == "calculator" {
    // Worker: host the calculator on the connection to the parent.
    let system = IntercomActorSystem(endpoint: "calculator-worker")
    let calculator = CalculatorService(actorSystem: system)
    system.publish(calculator, as: "calculator")
    let router = Router()
    try system.install(on: router)
    let parent = try await Peer.parent(router: router)
    await parent.waitUntilClosed()  // serve until the parent says goodbye
    _ = calculator
} else {
    // Parent: run the worker for the scope below, and call its calculator as a distributed actor.
    let worker = try await Worker.withWorker(.currentExecutable(role: "calculator")) { worker in
        let system = IntercomActorSystem()
        system.register(worker.peer, as: "calculator-worker")
        let calculator = try $Calculator.resolve(
            id: IntercomActorID(endpoint: "calculator-worker", name: "calculator"), using: system)
        print("worker pid \(worker.pid)")
        print("add(40, 2)        = \(try await calculator.add(40, 2))")
        print("divide(84, by: 2) = \(try await calculator.divide(84, by: 2))")
        do {
            _ = try await calculator.divide(1, by: 0)
        } catch let error as CalculatorError {
            print("divide(1, by: 0)  threw \(error) — the worker's own error type, rethrown here")
        }
        return worker
    }
    // Stopped (goodbye) and reaped when the scope ended.
    print("worker \(worker.exitStatus.map { "\($0)" } ?? "still running?")")
}
