#if canImport(FoundationEssentials)
public import IntercomTransport
public import IntercomCore
internal import IntercomBus
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import Subprocess
internal import SystemPackage
internal import Synchronization
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
/// ```swift
/// let worker = try await Worker.spawn(.currentExecutable(role: "camera"))
/// let ack = try await worker.peer.call("camera.exposure.set", SetExposure(ms: 10), returning: Ack.self)
/// let status = await worker.stop()            // goodbye, SIGTERM, SIGKILL
/// // in the child: let parent = try await Peer.parent(router: router)
/// ```
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

    private init(spec: WorkerSpec, pid: Int32, peer: Peer, exit: ExitRecord) {
        self.spec = spec
        self.pid = pid
        self.peer = peer
        self.exit = exit
    }

    /// Starts `spec` and completes the handshake with it.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` if it cannot be started, or
    ///   `peerLost` (with its exit status) if it exits before the handshake.
    public static func spawn(
        _ spec: WorkerSpec, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration()
    ) async throws(IntercomError) -> Worker {
        switch await Self.launch(spec, router: router, configuration: configuration) {
        case .running(let worker): return worker
        case .failedToStart(let error, _): throw error
        }
    }

    enum Launch {
        case running(Worker)
        /// Could not start or died before the handshake (with its status, if it ran).
        case failedToStart(IntercomError, ProcessExitStatus?)
    }

    static func launch(_ spec: WorkerSpec, router: Router?, configuration: Peer.Configuration) async -> Launch {
        let sockets: SocketPair
        do {
            sockets = try SocketPair()
        } catch {
            return .failedToStart(error, nil)
        }
        var variables: [Environment.Key: String?] = [
            Environment.Key(stringLiteral: WorkerEnvironment.parentDescriptor): "0",
            Environment.Key(stringLiteral: WorkerEnvironment.parentPID): "\(getpid())",
            Environment.Key(stringLiteral: WorkerEnvironment.role): spec.role,
        ]
        for (key, value) in spec.environment { variables[Environment.Key(stringLiteral: key)] = value }
        let environment = Environment.inherit.updating(variables)
        let record = ExitRecord()
        let (started, startedContinuation) = AsyncStream.makeStream(of: Int32.self)
        let childEnd = sockets.second
        Task.detached {
            do {
                let result = try await Subprocess.run(
                    .path(FilePath(spec.executablePath)),
                    arguments: Arguments(spec.arguments),
                    environment: environment,
                    input: .fileDescriptor(FileDescriptor(rawValue: childEnd), closeAfterSpawningProcess: true),
                    output: .currentStandardOutput,
                    error: .currentStandardError
                ) { execution in
                    startedContinuation.yield(execution.processIdentifier.value)
                    startedContinuation.finish()
                }
                switch result.terminationStatus {
                case .exited(let code): record.finish(.exited(code))
                case .signaled(let signal): record.finish(.signaled(signal))
                }
            } catch {
                startedContinuation.finish()
                record.failToStart("\(error)")
            }
        }
        var pids = started.makeAsyncIterator()
        guard let pid = await pids.next() else {
            POSIX.close(sockets.first)
            return .failedToStart(
                IntercomError(
                    .connectionFailed,
                    "cannot start \(spec.executablePath): \(record.startFailure ?? "unknown error")"), nil)
        }
        do {
            let peer = try await Peer.adopt(fileDescriptor: sockets.first, router: router, configuration: configuration)
            return .running(Worker(spec: spec, pid: pid, peer: peer, exit: record))
        } catch {
            // It died (or never spoke Intercom): report how it ended.
            POSIX.kill(pid, SIGKILL)
            let status = await record.wait()
            return .failedToStart(
                IntercomError(
                    .peerLost, "worker \(spec.role ?? spec.executablePath) (pid \(pid)) \(status) before the handshake: \(error.message)"),
                status)
        }
    }

    /// How the child ended, once it has (nil while it runs).
    public var exitStatus: ProcessExitStatus? { self.exit.status }

    /// Waits for the child to exit (it is reaped by then).
    @discardableResult
    public func waitForExit() async -> ProcessExitStatus {
        await self.exit.wait()
    }

    /// Waits up to `limit` for the child to exit.
    public func waitForExit(upTo limit: Duration) async -> ProcessExitStatus? {
        await self.exit.wait(upTo: limit)
    }

    /// Sends `signal` to the child (no-op once it has been reaped).
    public func kill(_ signal: Int32) {
        guard self.exit.status == nil else { return }
        POSIX.kill(self.pid, signal)
    }

    /// Stops the child gracefully: says goodbye (closes the connection), sends
    /// `SIGTERM` at half the grace period, `SIGKILL` at the end of it, and returns
    /// its exit status once it is reaped. A child that ignores both is gone within
    /// the grace period plus the time the kernel takes to reap it.
    ///
    /// Calls the child was still serving fail with `closed` on this side; calls the
    /// child made to this side fail with `peerLost` there.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> ProcessExitStatus {
        if let status = self.exit.status { return status }
        await self.peer.close()
        if let status = await self.exit.wait(upTo: grace / 2) { return status }
        self.kill(SIGTERM)
        if let status = await self.exit.wait(upTo: grace / 2) { return status }
        self.kill(SIGKILL)
        return await self.exit.wait()
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
        let timer = limit.map { limit in
            Task {
                try? await Task.sleep(for: limit)
                self.resume(id, with: nil)
            }
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
