internal import IntercomTransport
public import IntercomCore
internal import IntercomBus
internal import Synchronization

/// When a supervised worker is started again after it exits.
public enum RestartPolicy: Sendable, Hashable {
    /// Never: one run.
    case never
    /// After a failure (non-zero exit or a signal), at most `maxRestarts` times within
    /// `window`; the n-th consecutive restart waits `backoff × 2^(n-1)` (capped at 30 s).
    case onFailure(maxRestarts: Int = 5, window: Duration = .seconds(60), backoff: Duration = .milliseconds(100))
    /// After every exit, with the same limit and backoff.
    case always(maxRestarts: Int = 5, window: Duration = .seconds(60), backoff: Duration = .milliseconds(100))
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

/// Starts workers and keeps them running by their ``RestartPolicy``, the way
/// launchd and systemd keep services running.
///
/// ```swift
/// let supervisor = Supervisor()
/// supervisor.start("camera", .currentExecutable(role: "camera"), policy: .onFailure())
/// for await event in supervisor.events { print(event) }
/// await supervisor.stopAll()
/// ```
public final class Supervisor: Sendable {
    /// Every start, exit, restart, failure and stop, as it happens.
    public let events: AsyncStream<LifecycleEvent>
    private let continuation: AsyncStream<LifecycleEvent>.Continuation
    private let state = Locked(State())

    private struct State {
        var workers: [String: Supervised] = [:]
    }

    private struct Supervised {
        var current: Worker?
        var stopping = false
        var loop: Task<Void, Never>?
        var restarts = 0
    }

    /// Creates a supervisor with no workers.
    public init() {
        (self.events, self.continuation) = AsyncStream.makeStream(of: LifecycleEvent.self)
    }

    /// Starts supervising `spec` under `name` (in the background; watch ``events``).
    ///
    /// `router` serves the worker's calls to this process; the same router serves
    /// every incarnation.
    public func start(
        _ name: String, _ spec: WorkerSpec, policy: RestartPolicy = .onFailure(), router: Router? = nil,
        configuration: Peer.Configuration = Peer.Configuration()
    ) {
        let loop = Task { await self.run(name, spec, policy: policy, router: router, configuration: configuration) }
        self.state.withLock { $0.workers[name, default: Supervised()].loop = loop }
    }

    /// The running incarnation of `name`, if one is up.
    public func worker(named name: String) -> Worker? {
        self.state.withLock { $0.workers[name]?.current }
    }

    /// How many times `name` has been restarted.
    public func restartCount(of name: String) -> Int {
        self.state.withLock { $0.workers[name]?.restarts ?? 0 }
    }

    private func run(
        _ name: String, _ spec: WorkerSpec, policy: RestartPolicy, router: Router?, configuration: Peer.Configuration
    ) async {
        var recentRestarts: [ContinuousClock.Instant] = []
        var consecutiveFailures = 0
        while true {
            let status: ProcessExitStatus
            var pid: Int32 = 0
            switch await Worker.launch(spec, router: router, configuration: configuration) {
            case .running(let worker):
                pid = worker.pid
                let stopping = self.state.withLock { state -> Bool in
                    state.workers[name]?.current = worker
                    return state.workers[name]?.stopping ?? false
                }
                self.continuation.yield(.started(name: name, pid: worker.pid))
                if stopping { await worker.stop() }
                status = await worker.waitForExit()
                self.state.withLock { $0.workers[name]?.current = nil }
            case .failedToStart(_, let exit):
                status = exit ?? .exited(127)
            }
            self.continuation.yield(.exited(name: name, pid: pid, status: status))
            if self.state.withLock({ $0.workers[name]?.stopping ?? true }) {
                self.continuation.yield(.stopped(name: name))
                return
            }
            let (maxRestarts, window, backoff): (Int, Duration, Duration)
            switch policy {
            case .never:
                return
            case .onFailure(let max, let w, let b):
                if status.isSuccess { return }
                (maxRestarts, window, backoff) = (max, w, b)
            case .always(let max, let w, let b):
                (maxRestarts, window, backoff) = (max, w, b)
            }
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
            self.continuation.yield(.restarting(name: name, attempt: attempt, delay: delay))
            try? await Task.sleep(for: delay)
            if self.state.withLock({ $0.workers[name]?.stopping ?? true }) {
                self.continuation.yield(.stopped(name: name))
                return
            }
        }
    }

    /// Stops `name` gracefully (see ``Worker/stop(grace:)``) and does not restart it.
    public func stop(_ name: String, grace: Duration = .seconds(5)) async {
        let (worker, loop) = self.state.withLock { state -> (Worker?, Task<Void, Never>?) in
            state.workers[name]?.stopping = true
            return (state.workers[name]?.current, state.workers[name]?.loop)
        }
        await worker?.stop(grace: grace)
        await loop?.value
    }

    /// Stops every worker at once, waits until all are reaped, and ends ``events``.
    public func stopAll(grace: Duration = .seconds(5)) async {
        let names = self.state.withLock { Array($0.workers.keys) }
        await withTaskGroup(of: Void.self) { group in
            for name in names { group.addTask { await self.stop(name, grace: grace) } }
        }
        self.continuation.finish()
    }
}
