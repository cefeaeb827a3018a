import Distributed
import Intercom
import IntercomActorExample

#if canImport(Glibc)
import Glibc
@_spi(IntercomInternals) internal import IntercomTransport
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
        CalculatorActor.waits.change { $0.waiting += 1 }
        do {
            try await Task.sleep(for: .milliseconds(milliseconds))
        } catch {
            CalculatorActor.waits.change {
                $0.waiting -= 1
                $0.cancellations += 1
            }
            throw error
        }
        CalculatorActor.waits.change { $0.waiting -= 1 }
        return milliseconds
    }

    distributed func failPlainly() throws {
        throw PlainError(detail: "not codable")
    }

}

extension CalculatorActor {
    /// `wait` calls in progress and ended by cancellation.
    static let waits = WaitCounts()
}

/// How many `wait` calls are in progress and how many ended by cancellation,
/// with tasks (the `actors.waits` handler) waiting for given counts: the tests
/// wait on these changes instead of asking again and again.
final class WaitCounts: Sendable {
    struct Counts {
        var waiting = 0
        var cancellations = 0
        var pair: [Int] { [self.waiting, self.cancellations] }
    }

    private let state = Locked<(counts: Counts, waiters: [(target: [Int], continuation: CheckedContinuation<Void, Never>)])>(
        (Counts(), []))

    var current: [Int] { self.state.withLock { $0.counts.pair } }

    func change(_ body: (inout Counts) -> Void) {
        let woken = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            body(&state.counts)
            let pair = state.counts.pair
            defer { state.waiters.removeAll { $0.target == pair } }
            return state.waiters.filter { $0.target == pair }.map(\.continuation)
        }
        for waiter in woken { waiter.resume() }
    }

    /// Returns once the counts are `target` ([in progress, cancelled]).
    func waitUntil(_ target: [Int]) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let reached = self.state.withLock { state -> Bool in
                if state.counts.pair == target { return true }
                state.waiters.append((target, continuation))
                return false
            }
            if reached { continuation.resume() }
        }
    }
}

/// `--actors NAME --bus DIR`: hosts a calculator published as "calculator" and a
/// temporary one published as "temporary" (dropped by `actors.drop.temporary`),
/// on the bus service NAME — and on `addresses` (`--listen tls://…`) — until asked to quit.
func serveActors(name: String, directory: String, configuration: Peer.Configuration, addresses: [Endpoint]) async throws -> Never {
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
    // [wait calls in progress, wait calls cancelled], once they are the argument's
    // (an empty argument: at once). The caller's timeout bounds the wait.
    try router.register("actors.waits") { (target: [Int], _: CallContext) -> [Int] in
        if !target.isEmpty { await CalculatorActor.waits.waitUntil(target) }
        return CalculatorActor.waits.current
    }
    try router.register("actors.drop.temporary") { (_: Int, _: CallContext) -> Bool in
        temporary.actor = nil  // the last reference: the actor deinitialises and resigns its id
        return true
    }
    let service = try await bus.serve(name, router: router, configuration: configuration, addresses: addresses)
    await service.waitForQuit()
    await service.close()
    _ = (calculator, echoer)
    exit(0)
}

final class TemporaryHolder: @unchecked Sendable {
    // Touched by one handler at a time in the tests.
    var actor: CalculatorActor?
}
