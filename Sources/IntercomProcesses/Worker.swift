@_spi(IntercomInternals) public import IntercomTransport
public import IntercomCore
internal import IntercomBus
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import Subprocess
internal import SystemPackage
internal import Synchronization
internal import Dispatch
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// What to run as a worker process.
public struct WorkerSpec: Sendable, Hashable {
    /// The executable's path.
    public var executablePath: String
    /// Its arguments.
    public var arguments: [String]
    /// Environment variables to add to (or override in) this process's environment.
    public var environment: [String: String]
    /// The role, passed to the child as ``Peer/workerRole``.
    public var role: String?

    /// Runs the executable at `path`.
    public init(executablePath: String, arguments: [String] = [], environment: [String: String] = [:], role: String? = nil) {
        self.executablePath = executablePath
        self.arguments = arguments
        self.environment = environment
        self.role = role
    }

    /// Runs this same executable again in `role` (the child reads ``Peer/workerRole``
    /// and takes another path through `main`).
    public static func currentExecutable(role: String, arguments: [String] = [], environment: [String: String] = [:])
        -> WorkerSpec
    {
        let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return WorkerSpec(executablePath: path, arguments: arguments, environment: environment, role: role)
    }
}

/// A child process started with a connection to this process already open.
///
/// Scoped — the worker lives as long as the closure, and is stopped and reaped
/// before the call returns, whatever the closure does:
///
/// ```swift
/// let ack = try await Worker.withWorker(.currentExecutable(role: "camera")) { camera in
///     try await camera.peer.call("camera.exposure.set", SetExposure(ms: 10), returning: Ack.self)
/// }
/// // in the child: let parent = try await Peer.parent(router: router)
/// ```
///
/// or started with ``spawn(_:router:configuration:)`` and stopped with ``stop(_:)``.
///
/// The child gets its end of a socket pair as its standard input (named by
/// `INTERCOM_PARENT_FD`); every other descriptor is closed in the child
/// (swift-subprocess spawns with `closefrom`). The child is reaped by its own
/// waiter (pidfd on Linux) — no zombies, and no other code's children are touched.
public final class Worker: Sendable {
    /// What was started.
    public let spec: WorkerSpec
    /// The child's pid.
    public let pid: Int32
    /// The connection to the child (its ``Peer/parent(router:configuration:)``).
    public let peer: Peer
    private let exit: ExitRecord
    /// The task that runs and reaps the process, for a worker from ``spawn(_:router:configuration:)``
    /// (awaited by ``stop(_:)`` and ``waitForExit()``); nil in a scope, which awaits it itself.
    private let runner: Task<Void, Never>?

    fileprivate init(spec: WorkerSpec, pid: Int32, peer: Peer, exit: ExitRecord, runner: Task<Void, Never>?) {
        self.spec = spec
        self.pid = pid
        self.peer = peer
        self.exit = exit
        self.runner = runner
    }

    /// Starts `spec`, completes the handshake with it, runs `body` with it, then
    /// stops it by `teardown` and waits until it is reaped — also when `body`
    /// throws or the calling task is cancelled (the teardown's waits still run
    /// their course: they do not sleep in the cancelled task).
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` if it cannot be started,
    ///   `peerLost` (with its exit status) if it exits before the handshake, or
    ///   what `body` throws.
    public static func withWorker<Value: Sendable>(
        _ spec: WorkerSpec, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration(),
        teardown: Teardown = .graceful(), _ body: (Worker) async throws -> Value
    ) async throws -> Value {
        try await Self.withLaunched(spec, router: router, configuration: configuration) { launch -> Result<Value, any Error> in
            switch launch {
            case .failedToStart(let error, _):
                return .failure(error)
            case .running(let worker):
                let result: Result<Value, any Error>
                do {
                    result = .success(try await body(worker))
                } catch {
                    result = .failure(error)
                }
                await worker.stop(teardown)
                return result
            }
        }.get()
    }

    /// Starts `spec` and completes the handshake with it. The worker runs until
    /// ``stop(_:)`` (or until it exits); prefer ``withWorker(_:router:configuration:teardown:_:)``,
    /// which cannot forget to stop it.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` if it cannot be started, or
    ///   `peerLost` (with its exit status) if it exits before the handshake.
    public static func spawn(
        _ spec: WorkerSpec, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration()
    ) async throws(IntercomError) -> Worker {
        let launching = try Launching(spec)
        let runner = Task { await launching.runProcess() }
        switch await launching.connect(router: router, configuration: configuration, runner: runner) {
        case .running(let worker): return worker
        case .failedToStart(let error, _): throw error
        }
    }

    enum Launch {
        case running(Worker)
        /// Could not start or died before the handshake (with its status, if it ran).
        case failedToStart(IntercomError, ProcessExitStatus?)
    }

    /// Starts `spec` and hands `body` the outcome; returns once `body` has and the
    /// process is reaped (so `body` must stop the worker or wait for its exit).
    ///
    /// The task that runs the process is held by this scope and awaited before it
    /// returns, but it is not a child task: swift-subprocess kills a process at
    /// once when the task running it is cancelled, and a cancelled scope must still
    /// stop its worker by the teardown (goodbye first). Nothing outlives the scope.
    static func withLaunched<Value: Sendable>(
        _ spec: WorkerSpec, router: Router?, configuration: Peer.Configuration, _ body: (Launch) async -> Value
    ) async -> Value {
        let launching: Launching
        do {
            launching = try Launching(spec)
        } catch {
            return await body(.failedToStart(error, nil))
        }
        let runner = Task { await launching.runProcess() }
        let launch = await launching.connect(router: router, configuration: configuration, runner: nil)
        let value = await body(launch)
        await runner.value
        return value
    }

    /// How the child ended, once it has (nil while it runs).
    public var exitStatus: ProcessExitStatus? { self.exit.status }

    /// Waits for the child to exit (it is reaped by then).
    @discardableResult
    public func waitForExit() async -> ProcessExitStatus {
        let status = await self.exit.wait()
        await self.runner?.value
        return status
    }

    /// Waits up to `timeout` for the child to exit; nil if it still runs then.
    public func waitForExit(timeout: Duration) async -> ProcessExitStatus? {
        await self.exit.wait(upTo: timeout)
    }

    /// Renamed ``waitForExit(timeout:)``.
    @available(*, deprecated, renamed: "waitForExit(timeout:)")
    public func waitForExit(upTo limit: Duration) async -> ProcessExitStatus? {
        await self.waitForExit(timeout: limit)
    }

    /// Sends `signal` to the child (nothing once it has been reaped: its pid may
    /// belong to another process by then).
    public func send(_ signal: Signal) {
        guard self.exit.status == nil else { return }
        POSIX.kill(self.pid, signal.rawValue)
    }

    /// Stops the child by `teardown` (by default: goodbye, `SIGTERM` after 2.5 s,
    /// `SIGKILL` after 5 s) and returns its exit status once it is reaped.
    ///
    /// Calls the child was still serving fail with `closed` on this side; calls the
    /// child made to this side fail with `peerLost` there.
    @discardableResult
    public func stop(_ teardown: Teardown = .graceful()) async -> ProcessExitStatus {
        var status = self.exit.status
        for step in teardown.steps where status == nil {
            switch step.action {
            case .goodbye: await self.peer.close()
            case .signal(let signal): self.send(signal)
            }
            status = await self.exit.wait(upTo: step.wait)
        }
        if status == nil { self.send(.kill) }
        let reaped = await self.waitForExit()
        await self.peer.close()
        return reaped
    }

    /// ``stop(_:)`` with ``Teardown/graceful(_:)`` of `grace`.
    @discardableResult
    public func stop(grace: Duration) async -> ProcessExitStatus {
        await self.stop(.graceful(grace))
    }
}

/// One start of a worker: the socket pair, the environment, the exit record, and
/// the two halves of starting — running the process (in a task its owner holds)
/// and the handshake.
private final class Launching: Sendable {
    let spec: WorkerSpec
    let sockets: SocketPair
    let environment: Environment
    let record = ExitRecord()
    let started: AsyncStream<Int32>
    let startedContinuation: AsyncStream<Int32>.Continuation

    init(_ spec: WorkerSpec) throws(IntercomError) {
        self.spec = spec
        self.sockets = try SocketPair()
        var variables: [Environment.Key: String?] = [
            Environment.Key(stringLiteral: WorkerEnvironment.parentDescriptor): "0",
            Environment.Key(stringLiteral: WorkerEnvironment.parentPID): "\(getpid())",
            Environment.Key(stringLiteral: WorkerEnvironment.role): spec.role,
        ]
        for (key, value) in spec.environment { variables[Environment.Key(stringLiteral: key)] = value }
        self.environment = Environment.inherit.updating(variables)
        (self.started, self.startedContinuation) = AsyncStream.makeStream(of: Int32.self)
    }

    /// Runs the process until it exits and records how (or why it never started).
    func runProcess() async {
        let started = self.startedContinuation
        do {
            let result = try await Subprocess.run(
                .path(FilePath(self.spec.executablePath)),
                arguments: Arguments(self.spec.arguments),
                environment: self.environment,
                input: .fileDescriptor(FileDescriptor(rawValue: self.sockets.second), closeAfterSpawningProcess: true),
                output: .currentStandardOutput,
                error: .currentStandardError
            ) { execution in
                started.yield(execution.processIdentifier.value)
                started.finish()
            }
            switch result.terminationStatus {
            case .exited(let code): self.record.finish(.exited(code))
            case .signaled(let signal): self.record.finish(.signaled(signal))
            }
        } catch {
            started.finish()
            self.record.failToStart("\(error)")
        }
    }

    /// Waits for the process to start and completes the handshake with it.
    func connect(router: Router?, configuration: Peer.Configuration, runner: Task<Void, Never>?) async -> Worker.Launch {
        let spec = self.spec
        var pids = self.started.makeAsyncIterator()
        guard let pid = await pids.next() else {
            POSIX.close(self.sockets.first)
            await runner?.value
            return .failedToStart(
                IntercomError(
                    .connectionFailed,
                    "cannot start \(spec.executablePath): \(self.record.startFailure ?? "unknown error")"), nil)
        }
        do {
            let peer = try await Peer.adopt(fileDescriptor: self.sockets.first, router: router, configuration: configuration)
            return .running(Worker(spec: spec, pid: pid, peer: peer, exit: self.record, runner: runner))
        } catch {
            // It died (or never spoke Intercom): report how it ended.
            POSIX.kill(pid, SIGKILL)
            let status = await self.record.wait()
            await runner?.value
            return .failedToStart(
                IntercomError(
                    .peerLost, "worker \(spec.role ?? spec.executablePath) (pid \(pid)) \(status) before the handshake: \(error.message)"),
                status)
        }
    }
}

/// The exit status of one child, and whoever waits for it.
final class ExitRecord: Sendable {
    private struct State {
        var status: ProcessExitStatus?
        var startFailure: String?
        var waiters: [UInt64: CheckedContinuation<ProcessExitStatus?, Never>] = [:]
        var nextWaiter: UInt64 = 0
        /// Timed waits whose time ran out before they started waiting.
        var expired: Set<UInt64> = []
        var over = false
    }

    private let state = Locked(State())

    var status: ProcessExitStatus? { self.state.withLock { $0.status } }
    var startFailure: String? { self.state.withLock { $0.startFailure } }

    func finish(_ status: ProcessExitStatus) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<ProcessExitStatus?, Never>] in
            state.status = status
            state.over = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }

    func failToStart(_ reason: String) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<ProcessExitStatus?, Never>] in
            state.startFailure = reason
            state.over = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    /// Waits for the exit (a process that never started counts as exit code 127).
    func wait() async -> ProcessExitStatus {
        await self.wait(upTo: nil) ?? .exited(127)
    }

    /// Waits up to `limit` (forever if nil); nil if the process still runs then.
    func wait(upTo limit: Duration?) async -> ProcessExitStatus? {
        let id = self.state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        // A timer outside Swift concurrency, not a sleeping task: a wait in a
        // cancelled task (a teardown after cancellation) still lasts its time.
        let timer = limit.map { limit in
            let item = DispatchWorkItem { self.resume(id, with: nil) }
            DispatchQueue.global().asyncAfter(deadline: .after(limit), execute: item)
            return item
        }
        defer { timer?.cancel() }
        return await withCheckedContinuation { (continuation: CheckedContinuation<ProcessExitStatus?, Never>) in
            let now = self.state.withLock { state -> ProcessExitStatus?? in
                if state.over { return .some(state.status) }
                if state.expired.remove(id) != nil { return .some(nil) }
                state.waiters[id] = continuation
                return .none
            }
            if case .some(let status) = now { continuation.resume(returning: status) }
        }
    }

    /// Resumes one waiter (if it is still waiting).
    private func resume(_ id: UInt64, with status: ProcessExitStatus?) {
        let waiter = self.state.withLock { state -> CheckedContinuation<ProcessExitStatus?, Never>? in
            guard let waiter = state.waiters.removeValue(forKey: id) else {
                if !state.over { state.expired.insert(id) }
                return nil
            }
            return waiter
        }
        waiter?.resume(returning: status)
    }
}
