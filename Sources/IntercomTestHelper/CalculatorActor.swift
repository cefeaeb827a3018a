import Distributed
import Intercom
import IntercomActorExample

#if canImport(Glibc)
import Glibc
#endif

/// The calculator implementation the actor tests call (their module never imports it).
distributed actor CalculatorActor: Calculator {
    typealias ActorSystem = IntercomActorSystem

    distributed func add(_ a: Int, _ b: Int) -> Int { a + b }

    distributed func divide(_ a: Int, by b: Int) throws -> Int {
        guard b != 0 else { throw CalculatorError.divisionByZero(dividend: a) }
        return a / b
    }

    distributed func wait(milliseconds: Int) async throws -> Int {
        CalculatorActor.waiting.add(1, ordering: .relaxed)
        defer { CalculatorActor.waiting.subtract(1, ordering: .relaxed) }
        do {
            try await Task.sleep(for: .milliseconds(milliseconds))
        } catch {
            CalculatorActor.cancellations.add(1, ordering: .relaxed)
            throw error
        }
        return milliseconds
    }

    distributed func failPlainly() throws {
        throw PlainError(detail: "not codable")
    }

}

import Synchronization
extension CalculatorActor {
    /// `wait` calls that ended by cancellation.
    static let cancellations = Atomic<Int>(0)
    /// `wait` calls in progress.
    static let waiting = Atomic<Int>(0)
}

/// `--actors NAME --bus DIR`: hosts a calculator published as "calculator" and a
/// temporary one published as "temporary" (dropped by `actors.drop.temporary`),
/// on the bus service NAME, until asked to quit.
func serveActors(name: String, directory: String) async throws -> Never {
    let bus = Bus(directory: directory)
    let system = IntercomActorSystem(endpoint: name, bus: bus)
    let calculator = CalculatorActor(actorSystem: system)
    system.publish(calculator, as: "calculator")
    let echoer = Echoer(actorSystem: system)
    system.publish(echoer, as: "echoer")
    let temporary = TemporaryHolder()
    temporary.actor = CalculatorActor(actorSystem: system)
    system.publish(temporary.actor!, as: "temporary")
    let router = Router()
    try system.install(on: router)
    try router.register("actors.waits") { (_: Int, _: CallContext) -> [Int] in
        [CalculatorActor.waiting.load(ordering: .relaxed), CalculatorActor.cancellations.load(ordering: .relaxed)]
    }
    try router.register("actors.drop.temporary") { (_: Int, _: CallContext) -> Bool in
        temporary.actor = nil  // the last reference: the actor deinitialises and resigns its id
        return true
    }
    let service = try await bus.serve(name, router: router)
    await service.waitForQuit()
    await service.close()
    _ = (calculator, echoer)
    exit(0)
}

final class TemporaryHolder: @unchecked Sendable {
    // Touched by one handler at a time in the tests.
    var actor: CalculatorActor?
}
