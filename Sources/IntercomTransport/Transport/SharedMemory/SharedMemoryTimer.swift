#if os(Linux)
internal import Synchronization

/// A timer on a shared-memory transport's thread.
final class SharedMemoryTimer: ScheduledWork, @unchecked Sendable {
    // `deadline` and `body` are immutable; `cancelled` is atomic.
    let deadline: ContinuousClock.Instant
    let body: @Sendable () -> Void
    private let cancelled = Atomic<Bool>(false)

    init(deadline: ContinuousClock.Instant, body: @escaping @Sendable () -> Void) {
        self.deadline = deadline
        self.body = body
    }

    var isCancelled: Bool { self.cancelled.load(ordering: .relaxed) }
    func cancel() { self.cancelled.store(true, ordering: .relaxed) }
}
#endif
