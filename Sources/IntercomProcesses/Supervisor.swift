@_spi(IntercomInternals) internal import IntercomTransport
public import IntercomCore
internal import IntercomBus
internal import Synchronization
internal import ServiceLifecycle

/// When a supervised worker is started again after it exits. (A struct, not an
/// enum: more policies may come without breaking a user's `switch`.)
public struct RestartPolicy: Sendable, Hashable {
    enum When: Hashable { case never, onFailure, always }
    let when: When
    /// At most this many restarts within ``window``; then the worker has failed for good.
    public let maxRestarts: Int
    /// The window ``maxRestarts`` counts in.
    public let window: Duration
    /// The wait before the first of consecutive restarts after failures; it doubles
    /// with each (capped at 30 s).
    public let backoff: Duration

    /// Never: one run.
    public static let never = RestartPolicy(when: .never, maxRestarts: 0, window: .zero, backoff: .zero)

    /// After a failure (non-zero exit or a signal), at most `maxRestarts` times within
    /// `window`; the n-th consecutive restart waits `backoff × 2^(n-1)` (capped at 30 s).
    public static func onFailure(
        maxRestarts: Int = 5, window: Duration = .seconds(60), backoff: Duration = .milliseconds(100)
    ) -> RestartPolicy {
        RestartPolicy(when: .onFailure, maxRestarts: maxRestarts, window: window, backoff: backoff)
    }

    /// After every exit, with the same limit and backoff.
    public static func always(
        maxRestarts: Int = 5, window: Duration = .seconds(60), backoff: Duration = .milliseconds(100)
    ) -> RestartPolicy {
        RestartPolicy(when: .always, maxRestarts: maxRestarts, window: window, backoff: backoff)
    }
}

/// What happens to supervised workers, in order.
public enum LifecycleEvent: Sendable, Hashable {
    /// An incarnation started and completed its handshake.
    case started(name: String, pid: Int32)
    /// An incarnation ended (it may be restarted). `pid` is 0 if it never started.
    case exited(name: String, pid: Int32, status: ProcessExitStatus)
    /// The worker will be started again after `delay` (the `attempt`-th restart).
    case restarting(name: String, attempt: Int, delay: Duration)
    /// The worker crashed too often: it is not restarted again.
    case failed(name: String, reason: String)
    /// The worker was stopped on request and will not be restarted.
    case stopped(name: String)
}

/// Keeps workers running by their ``RestartPolicy``, the way launchd and systemd
/// keep services running — for as long as its ``run()`` runs, which owns them:
/// every worker is a child task of `run()`, and `run()` returns only once every
/// worker is stopped and reaped.
///
/// ```swift
/// let supervisor = Supervisor()
/// supervisor.start("camera", .currentExecutable(role: "camera"), policy: .onFailure())
/// try await withThrowingDiscardingTaskGroup { group in
///     group.addTask { await supervisor.run() }       // or put it in a ServiceGroup
///     for await event in supervisor.events { print(event) }
/// }
/// ```
///
/// `run()` ends on ``stopAll(_:)``, on cancellation, or on a swift-service-lifecycle
/// graceful shutdown; each way it stops every worker by its teardown first.
public final class Supervisor: Sendable {
    /// Every start, exit, restart, failure and stop, as it happens; it ends when ``run()`` does.
    public let events: AsyncStream<LifecycleEvent>
    private let continuation: AsyncStream<LifecycleEvent>.Continuation
    /// Workers declared by ``start(_:_:policy:router:configuration:)``, taken by ``run()``.
    private let requests: AsyncStream<Request>
    private let requestContinuation: AsyncStream<Request>.Continuation
    private let state = Locked(State())

    struct Request: Sendable {
        let name: String
        let spec: WorkerSpec
        let policy: RestartPolicy
        let router: Router?
        let configuration: Peer.Configuration
    }

    private struct State {
        var workers: [String: Supervised] = [:]
        /// No worker starts again: ``stopAll(_:)``, cancellation or a graceful shutdown began.
        var shuttingDown = false
        /// How the workers still running are stopped when `run()` ends.
        var teardown = Teardown.graceful()
        var running = false
        var finished = false
        /// Tasks in ``stopAll(_:)`` waiting for `run()` to end.
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private struct Supervised {
        var current: Worker?
        var stopping = false
        var restarts = 0
        var ended = false
        /// Tasks in ``stop(_:_:)`` waiting for this worker's supervision to end.
        var endWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Where restarts are counted (`intercom_worker_restarts`, dimension `worker`).
    private let metrics: MetricsReporting

    /// Creates a supervisor with no workers.
    ///
    /// - Parameter metrics: report each restart through swift-metrics
    ///   (``MetricsReporting``); off by default.
    public init(metrics: MetricsReporting = .off) {
        self.metrics = metrics
        (self.events, self.continuation) = AsyncStream.makeStream(of: LifecycleEvent.self)
        (self.requests, self.requestContinuation) = AsyncStream.makeStream(of: Request.self)
    }

    /// Supervises `spec` under `name`: started by ``run()`` (at once if it runs
    /// already; watch ``events``). A name already supervised, or a start once the
    /// supervisor is stopping, is refused with a ``LifecycleEvent/failed(name:reason:)``
    /// event saying so.
    ///
    /// `router` serves the worker's calls to this process; the same router serves
    /// every incarnation.
    public func start(
        _ name: String, _ spec: WorkerSpec, policy: RestartPolicy = .onFailure(), router: Router? = nil,
        configuration: Peer.Configuration = Peer.Configuration()
    ) {
        let refusal = self.state.withLock { state -> String? in
            if state.shuttingDown { return "the supervisor is stopping or has stopped; nothing starts any more" }
            if state.workers[name] != nil { return "a worker named '\(name)' is already supervised; stop it first" }
            state.workers[name] = Supervised()
            return nil
        }
        if let refusal {
            // Said where the caller already listens (after run() ended, nobody does).
            self.continuation.yield(.failed(name: name, reason: "not started: \(refusal)"))
            return
        }
        self.requestContinuation.yield(
            Request(name: name, spec: spec, policy: policy, router: router, configuration: configuration))
    }

    /// The running incarnation of `name`, if one is up.
    public func worker(named name: String) -> Worker? {
        self.state.withLock { $0.workers[name]?.current }
    }

    /// How many times `name` has been restarted.
    public func restartCount(of name: String) -> Int {
        self.state.withLock { $0.workers[name]?.restarts ?? 0 }
    }

    /// Runs the supervised workers — each in a child task of this call — until
    /// ``stopAll(_:)``, cancellation or a graceful shutdown; then stops every
    /// worker still running by the teardown (``Teardown/graceful(_:)`` unless
    /// `stopAll` said otherwise), waits until all are reaped, and ends ``events``.
    ///
    /// A supervisor runs once: a second call returns at once.
    public func run() async {
        let first = self.state.withLock { state -> Bool in
            defer { state.running = true }
            return !state.running
        }
        guard first else { return }
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withDiscardingTaskGroup { group in
                    for await request in self.requests {
                        group.addTask { await self.supervise(request) }
                    }
                    // Requests ended: stop whatever still runs. The waits of a
                    // teardown do not sleep in this (possibly cancelled) task.
                    let (workers, teardown) = self.state.withLock { state -> ([Worker], Teardown) in
                        for name in state.workers.keys { state.workers[name]?.stopping = true }
                        return (state.workers.values.compactMap(\.current), state.teardown)
                    }
                    for worker in workers { group.addTask { await worker.stop(teardown) } }
                }
            } onCancel: {
                self.shutDown(nil)
            }
        } onGracefulShutdown: {
            self.shutDown(nil)
        }
        self.continuation.finish()
        let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            defer { state.finishWaiters.removeAll() }
            return state.finishWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// No worker starts again; `run()` stops those that run (by `teardown`, if given).
    private func shutDown(_ teardown: Teardown?) {
        self.state.withLock { state in
            state.shuttingDown = true
            if let teardown { state.teardown = teardown }
        }
        self.requestContinuation.finish()
    }

    private func supervise(_ request: Request) async {
        let name = request.name
        var recentRestarts: [ContinuousClock.Instant] = []
        var consecutiveFailures = 0
        defer {
            let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.workers[name]?.ended = true
                defer { state.workers[name]?.endWaiters.removeAll() }
                return state.workers[name]?.endWaiters ?? []
            }
            for waiter in waiters { waiter.resume() }
        }
        while true {
            let (status, pid) = await Worker.withLaunched(
                request.spec, router: request.router, configuration: request.configuration
            ) { launch -> (ProcessExitStatus, Int32) in
                switch launch {
                case .running(let worker):
                    let stopping = self.state.withLock { state -> Bool in
                        state.workers[name]?.current = worker
                        return self.isStopping(name, state)
                    }
                    self.continuation.yield(.started(name: name, pid: worker.pid))
                    if stopping { await worker.stop(self.state.withLock { $0.teardown }) }
                    let status = await worker.waitForExit()
                    self.state.withLock { $0.workers[name]?.current = nil }
                    return (status, worker.pid)
                case .failedToStart(_, let exit):
                    return (exit ?? .exited(127), 0)
                }
            }
            self.continuation.yield(.exited(name: name, pid: pid, status: status))
            if self.state.withLock({ self.isStopping(name, $0) }) {
                self.continuation.yield(.stopped(name: name))
                return
            }
            let policy = request.policy
            switch policy.when {
            case .never: return
            case .onFailure: if status.isSuccess { return }
            case .always: break
            }
            let (maxRestarts, window, backoff) = (policy.maxRestarts, policy.window, policy.backoff)
            let now = ContinuousClock.now
            recentRestarts.removeAll { now - $0 > window }
            guard recentRestarts.count < maxRestarts else {
                self.continuation.yield(
                    .failed(name: name, reason: "\(name) ended \(recentRestarts.count + 1) times within \(window) (last: \(status)); giving up"))
                return
            }
            recentRestarts.append(now)
            consecutiveFailures = status.isSuccess ? 0 : consecutiveFailures + 1
            let exponent = min(max(consecutiveFailures - 1, 0), 16)
            let delay = min(backoff * (1 << exponent), .seconds(30))
            let attempt = self.state.withLock { state -> Int in
                state.workers[name]?.restarts += 1
                return state.workers[name]?.restarts ?? 0
            }
            self.metrics.counter("intercom_worker_restarts", dimensions: [("worker", name)])?()
            self.continuation.yield(.restarting(name: name, attempt: attempt, delay: delay))
            // Cut short by cancellation, which also marks every worker stopping.
            try? await Task.sleep(for: delay)
            if Task.isCancelled || self.state.withLock({ self.isStopping(name, $0) }) {
                self.continuation.yield(.stopped(name: name))
                return
            }
        }
    }

    private func isStopping(_ name: String, _ state: State) -> Bool {
        state.shuttingDown || (state.workers[name]?.stopping ?? true)
    }

    /// Stops `name` by `teardown` (see ``Worker/stop(_:)``), does not restart it,
    /// and returns once its supervision has ended.
    public func stop(_ name: String, _ teardown: Teardown = .graceful()) async {
        let worker = self.state.withLock { state -> Worker? in
            state.workers[name]?.stopping = true
            return state.workers[name]?.current
        }
        await worker?.stop(teardown)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = self.state.withLock { state -> Bool in
                guard state.running, let supervised = state.workers[name], !supervised.ended else { return false }
                state.workers[name]?.endWaiters.append(continuation)
                return true
            }
            if !wait { continuation.resume() }
        }
    }

    /// ``stop(_:_:)`` with ``Teardown/graceful(_:)`` of `grace`.
    public func stop(_ name: String, grace: Duration) async {
        await self.stop(name, .graceful(grace))
    }

    /// Ends ``run()``: every worker is stopped by `teardown` at once; returns when
    /// all are reaped and ``events`` has ended (at once if `run()` never ran).
    public func stopAll(_ teardown: Teardown = .graceful()) async {
        self.shutDown(teardown)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = self.state.withLock { state -> Bool in
                guard state.running, !state.finished else { return false }
                state.finishWaiters.append(continuation)
                return true
            }
            if !wait {
                self.continuation.finish()
                continuation.resume()
            }
        }
    }

    /// ``stopAll(_:)`` with ``Teardown/graceful(_:)`` of `grace`.
    public func stopAll(grace: Duration) async {
        await self.stopAll(.graceful(grace))
    }
}
