internal import DequeModule
@_spi(IntercomInternals) public import IntercomTransport

/// How busy a namespace's workers are: see ``Router/setWorkers(_:forNamespace:)``.
public struct WorkerPoolStatus: Sendable, Hashable, CustomStringConvertible {
    /// How many handlers of the namespace may run at once.
    public var workers: Int
    /// How many run now.
    public var busy: Int
    /// How many calls wait for a worker (each still holds one of its
    /// connection's handler slots, ``Peer/Configuration/maxConcurrentHandlers``).
    public var waiting: Int

    /// Creates a status (for comparisons in tests).
    public init(workers: Int, busy: Int, waiting: Int) {
        self.workers = workers
        self.busy = busy
        self.waiting = waiting
    }

    /// `2 workers, 2 busy, 4 waiting`.
    public var description: String { "\(self.workers) workers, \(self.busy) busy, \(self.waiting) waiting" }
}

/// The worker count of one namespace (epyrpc's worker count per API): at most
/// `workers` of its handlers run at once, across every connection the router
/// serves; the others wait in arrival order. A waiting call still obeys its
/// deadline and its caller's cancellation: it leaves the queue and answers
/// `timeout` or `cancelled` without ever running.
///
/// Why in the router and not in the connection: the limit protects what the
/// namespace's handlers share (a camera, a database handle), and that is shared
/// by all connections, as the router is.
final class WorkerPool: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var workers: Int
        var busy = 0
        var waiters = Deque<Waiter>()
        var nextWaiterID: UInt64 = 0
    }

    private let state: Locked<State>

    init(workers: Int) {
        self.state = Locked(State(workers: workers))
    }

    var status: WorkerPoolStatus {
        self.state.withLock { WorkerPoolStatus(workers: $0.workers, busy: $0.busy, waiting: $0.waiters.count) }
    }

    /// Changes the worker count; a larger one starts waiting calls at once.
    func setWorkers(_ workers: Int) {
        let started = self.state.withLock { state -> [Waiter] in
            state.workers = workers
            return Self.admit(&state)
        }
        for waiter in started { waiter.continuation.resume() }
    }

    /// Runs `body` on one of the workers, waiting for one first if all are busy.
    ///
    /// - Throws: `CancellationError` if the task is cancelled while it waits
    ///   (the deadline's timer cancels it too), or what `body` throws.
    func run<Result>(_ body: () async throws -> Result) async throws -> Result {
        try await self.acquire()
        defer { self.release() }
        return try await body()
    }

    private func acquire() async throws {
        let id: UInt64? = self.state.withLock { state in
            guard state.busy >= state.workers else {
                state.busy += 1
                return nil
            }
            state.nextWaiterID &+= 1
            return state.nextWaiterID
        }
        guard let id else { return }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // Queued and admitted under one lock: a worker freed since the first look starts it now.
                let (cancelled, started) = self.state.withLock { state -> (Bool, [Waiter]) in
                    if Task.isCancelled { return (true, []) }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return (false, Self.admit(&state))
                }
                if cancelled { continuation.resume(throwing: CancellationError()) }
                for waiter in started { waiter.continuation.resume() }
            }
        } onCancel: {
            let waiter = self.state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private func release() {
        let started = self.state.withLock { state -> [Waiter] in
            state.busy -= 1
            return Self.admit(&state)
        }
        for waiter in started { waiter.continuation.resume() }
    }

    /// Takes waiters off the queue while workers are free (resumed by the caller, outside the lock).
    private static func admit(_ state: inout State) -> [Waiter] {
        var started: [Waiter] = []
        while state.busy < state.workers, let waiter = state.waiters.popFirst() {
            state.busy += 1
            started.append(waiter)
        }
        return started
    }
}

extension Router {
    /// Lets at most `workers` handlers under `prefix` run at once (epyrpc's worker
    /// count per API), across all the connections this router serves; `nil`
    /// removes the limit for calls that arrive afterwards.
    ///
    /// Calls over the limit wait in arrival order. Waiting, they keep their
    /// deadline and can be cancelled by their caller; and they hold one of their
    /// connection's handler slots (``Peer/Configuration/maxConcurrentHandlers``),
    /// so a connection whose calls all wait here stops reading, as it would
    /// with busy handlers. Methods outside `prefix` are not held up.
    ///
    /// ```swift
    /// try router.setWorkers(1, forNamespace: "camera")   // one camera: one call at a time
    /// ```
    ///
    /// - Throws: ``IntercomError/Code/invalidName`` if `prefix` is not a valid name,
    ///   ``IntercomError/Code/invalidConfiguration`` if `workers` is below 1.
    public func setWorkers(_ workers: Int?, forNamespace prefix: String) throws(IntercomError) {
        try Self.validate(prefix)
        if let workers, workers < 1 {
            throw IntercomError(.invalidConfiguration, "a namespace needs at least 1 worker (got \(workers) for '\(prefix)')")
        }
        self.updateWorkerPools { pools in
            guard let workers else {
                pools.removeValue(forKey: prefix)
                return
            }
            if let pool = pools[prefix] { pool.setWorkers(workers) } else { pools[prefix] = WorkerPool(workers: workers) }
        }
    }

    /// How busy the workers of `prefix` are, or `nil` if it has no worker count.
    public func workerStatus(forNamespace prefix: String) -> WorkerPoolStatus? {
        self.workerPool(named: prefix)?.status
    }
}

extension RouterNamespace {
    /// Lets at most `workers` of this namespace's handlers run at once; see
    /// ``Router/setWorkers(_:forNamespace:)``.
    ///
    /// - Throws: ``IntercomError/Code/invalidConfiguration`` if `workers` is below 1.
    public func setWorkers(_ workers: Int?) throws(IntercomError) {
        try self.router.setWorkers(workers, forNamespace: self.prefix)
    }

    /// How busy this namespace's workers are, or `nil` if it has no worker count.
    public var workerStatus: WorkerPoolStatus? { self.router.workerStatus(forNamespace: self.prefix) }
}
