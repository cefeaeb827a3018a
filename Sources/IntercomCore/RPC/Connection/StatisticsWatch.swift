@_spi(IntercomInternals) internal import IntercomTransport
internal import Synchronization

/// Tasks waiting for a connection's ``Peer/statistics`` to meet a condition,
/// woken by the changes themselves (a call registered or ended, a handler
/// started or finished, a late reply, a sender blocked or released) — so a test
/// waits on an event, not by asking again and again.
///
/// Costs one atomic load per change while nobody waits.
final class StatisticsWatch: Sendable {
    typealias Condition = @Sendable (Peer.Statistics) -> Bool

    private struct Waiters {
        var next: UInt64 = 0
        var all: [UInt64: (condition: Condition, continuation: CheckedContinuation<Bool, Never>)] = [:]
    }

    private let watching = Atomic<Int>(0)
    private let waiters = Locked(Waiters())

    /// Something counted may have changed: wake the waiters whose condition holds now.
    /// Call it with no lock held (`statistics` takes the peer's and the transport's).
    func changed(_ statistics: () -> Peer.Statistics) {
        guard self.watching.load(ordering: .acquiring) > 0 else { return }
        let now = statistics()
        let met = self.waiters.withLock { waiters -> [CheckedContinuation<Bool, Never>] in
            let keys = waiters.all.filter { $0.value.condition(now) }.map(\.key)
            return keys.compactMap { waiters.all.removeValue(forKey: $0)?.continuation }
        }
        guard !met.isEmpty else { return }
        self.watching.subtract(met.count, ordering: .releasing)
        for waiter in met { waiter.resume(returning: true) }
    }

    /// Registers a waiter; returns its key (for ``remove(_:)``).
    func add(_ condition: @escaping Condition, _ continuation: CheckedContinuation<Bool, Never>) -> UInt64 {
        let key = self.waiters.withLock { waiters -> UInt64 in
            waiters.next += 1
            waiters.all[waiters.next] = (condition, continuation)
            return waiters.next
        }
        self.watching.add(1, ordering: .releasing)
        return key
    }

    /// Takes back a waiter whose time ran out; nil if it was already woken.
    func remove(_ key: UInt64) -> CheckedContinuation<Bool, Never>? {
        guard let waiter = self.waiters.withLock({ $0.all.removeValue(forKey: key) }) else { return nil }
        self.watching.subtract(1, ordering: .releasing)
        return waiter.continuation
    }
}
