import Intercom
@_spi(IntercomInternals) import IntercomTransport
import Synchronization

/// The streaming methods the stream tests call:
/// - `count` N: the items 0…N−1;
/// - `count.failing` N: N items, then `HelperError.refused("midstream", 7)`;
/// - `count.forever`: [0, 0, …], [1, 1, …], … (128 copies each, so the window
///   fills after about a thousand items) until cancelled (then counts the cancellation);
/// - `streams.blocked`: once a `count.forever` producer waits for credit, how
///   many items it had sent;
/// - `streams.cancelled` N: once N `count.forever` producers saw their
///   cancellation, how many did.
func registerStreamHandlers(on router: Router) throws {
    let sent = Atomic<Int>(0)
    let cancellations = CountLatch()
    try router.registerStream("count") { (n: Int, _: CallContext, stream: StreamWriter<Int>) in
        for i in 0..<n { try await stream.send(i) }
    }
    try router.registerStream("count.failing") { (n: Int, _: CallContext, stream: StreamWriter<Int>) in
        for i in 0..<n { try await stream.send(i) }
        throw HelperError.refused(reason: "midstream", code: 7)
    }
    try router.registerStream("count.forever") { (_: Int, _: CallContext, stream: StreamWriter<[Int]>) in
        sent.store(0, ordering: .relaxed)
        var i = 0
        do {
            while true {
                try await stream.send([Int](repeating: i, count: 128))
                i += 1
                sent.store(i, ordering: .relaxed)
            }
        } catch {
            cancellations.increment()
            throw error
        }
    }
    try router.register("streams.blocked") { (_: Int, context: CallContext) -> Int in
        let blocked = await context.peer.waitForStatistics(timeout: .seconds(30)) { $0.streamsAwaitingCredit >= 1 }
        return blocked ? sent.load(ordering: .relaxed) : -1
    }
    try router.register("streams.cancelled") { (n: Int, _: CallContext) -> Int in
        await cancellations.wait(until: n)
    }
}

/// A count that tasks can wait on reaching a value. (`Locked`, not `Mutex`:
/// ThreadSanitizer does not model `Mutex`'s futex and reported it.)
final class CountLatch: Sendable {
    private let state = Locked<(count: Int, waiters: [(Int, CheckedContinuation<Int, Never>)])>((0, []))

    func increment() {
        let ready = self.state.withLock { state -> [(CheckedContinuation<Int, Never>, Int)] in
            state.count += 1
            let count = state.count
            let ready = state.waiters.filter { $0.0 <= count }.map { ($0.1, count) }
            state.waiters.removeAll { $0.0 <= count }
            return ready
        }
        for (waiter, count) in ready { waiter.resume(returning: count) }
    }

    func wait(until target: Int) async -> Int {
        await withCheckedContinuation { continuation in
            let now = self.state.withLock { state -> Int? in
                if state.count >= target { return state.count }
                state.waiters.append((target, continuation))
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}
