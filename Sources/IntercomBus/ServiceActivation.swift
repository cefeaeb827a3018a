@_spi(IntercomInternals) public import IntercomTransport
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// How to start a service that is not running when someone asks for it
/// (D-Bus activation, launchd's on-demand services): the program and its
/// arguments. Put it in ``Bus/activations`` (or a JSON file read by
/// ``Bus/loadActivations(fromFile:)``) and a connection or call to the absent
/// service starts it, waits until it serves its name, and goes through.
///
/// The program is started in a session of its own (a terminal's Ctrl-C does
/// not stop it), with stdin from /dev/null, stdout and stderr to ``logFile``
/// (or /dev/null), the caller's environment plus ``environment`` and
/// `INTERCOM_BUS_DIR` naming the bus, and outlives whoever started it. It must
/// serve the name on that bus (`Bus().serve(name, …)`) within ``startTimeout``.
///
/// In a file, the keys are the service names:
///
/// ```json
/// { "camera": { "executable": "/usr/libexec/camera-service", "arguments": ["--quiet"], "startTimeoutSeconds": 5 } }
/// ```
public struct ServiceActivation: Codable, Sendable, Hashable {
    /// The program's absolute path.
    public var executable: String
    /// Its arguments (without the program name).
    public var arguments: [String]
    /// Variables added to (or replacing those of) the starting process's environment.
    public var environment: [String: String]
    /// How long it may take to serve its name.
    public var startTimeout: Duration
    /// Where its output goes (appended), or nil for /dev/null.
    public var logFile: String?

    /// Describes how to start a service.
    public init(
        executable: String, arguments: [String] = [], environment: [String: String] = [:],
        startTimeout: Duration = .seconds(10), logFile: String? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.startTimeout = startTimeout
        self.logFile = logFile
    }

    private enum CodingKeys: String, CodingKey {
        case executable, arguments, environment, startTimeoutSeconds, logFile
    }

    /// Decodes the file form (every key but `executable` optional).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.executable = try container.decode(String.self, forKey: .executable)
        self.arguments = try container.decodeIfPresent([String].self, forKey: .arguments) ?? []
        self.environment = try container.decodeIfPresent([String: String].self, forKey: .environment) ?? [:]
        let seconds = try container.decodeIfPresent(Double.self, forKey: .startTimeoutSeconds) ?? 10
        self.startTimeout = .milliseconds(Int64((seconds * 1000).rounded()))
        self.logFile = try container.decodeIfPresent(String.self, forKey: .logFile)
    }

    /// Encodes the file form.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(self.executable, forKey: .executable)
        try container.encode(self.arguments, forKey: .arguments)
        try container.encode(self.environment, forKey: .environment)
        let parts = self.startTimeout.components
        try container.encode(Double(parts.seconds) + Double(parts.attoseconds) / 1e18, forKey: .startTimeoutSeconds)
        try container.encodeIfPresent(self.logFile, forKey: .logFile)
    }

    /// Where to look for why it failed, for error messages.
    var outputHint: String {
        self.logFile.map { "its output is in \($0)" } ?? "its output was dropped: set logFile to keep it"
    }

    /// Waits for a process this process activated to exit and returns its
    /// wait status (as `waitpid` gives it); nil if it activated no process `pid`.
    public static func exitStatus(ofActivated pid: Int32) async -> Int32? {
        await ActivatedProcesses.shared.exitStatus(of: pid)
    }
}

extension Bus {
    /// Reads activations from a JSON file (an object from service names to
    /// ``ServiceActivation``s) into ``activations``, replacing those of the same names.
    ///
    /// - Throws: ``IntercomError/Code/invalidConfiguration`` naming the file and what is wrong with it.
    public mutating func loadActivations(fromFile path: String) throws(IntercomError) {
        let fd = POSIX.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw IntercomError(.invalidConfiguration, "cannot read activations from \(path): \(String(cString: strerror(errno)))")
        }
        defer { POSIX.close(fd) }
        guard let bytes = POSIX.readAll(fd, limit: 1 << 20) else {
            throw IntercomError(.invalidConfiguration, "cannot read activations from \(path) (unreadable, or over 1 MiB)")
        }
        let loaded: [String: ServiceActivation]
        do {
            loaded = try JSONDecoder().decode([String: ServiceActivation].self, from: Data(bytes))
        } catch {
            throw IntercomError(
                .invalidConfiguration,
                "\(path) is not an object of service names to {\"executable\": …, \"arguments\": […]}: \(error)")
        }
        for (name, activation) in loaded {
            guard activation.executable.hasPrefix("/") else {
                throw IntercomError(.invalidConfiguration, "\(path): the executable of '\(name)' must be an absolute path")
            }
            self.activations[name] = activation
        }
    }

    /// Starts `name` from its activation unless a process serves it (or is
    /// starting it, or it is suspended: then this waits for that one), and
    /// returns its record once it is ready.
    ///
    /// One process at a time starts a given name (the others wait for it):
    /// concurrent callers, in this process or others, get one instance.
    ///
    /// - Parameter timeout: how long to wait; the activation's `startTimeout` if nil.
    /// - Throws: ``IntercomError/Code/serviceNotFound`` if `name` has no activation
    ///   or its program cannot start or exits before it serves the name (with its
    ///   exit status); `timeout` if it does not serve it in time (it is left running).
    @discardableResult
    public func activate(_ name: String, timeout: Duration? = nil) async throws(IntercomError) -> ServiceInfo {
        guard let activation = self.activations[name] else {
            throw IntercomError(.serviceNotFound, "no activation for service '\(name)' on bus \(self.directory)")
        }
        let directory = try self.open()
        try directory.checkServiceName(name)
        if let info = self.liveRecord(name, in: directory) { return info }
        let timeout = timeout ?? activation.startTimeout
        let deadline = ContinuousClock.now + timeout
        let watcher = DirectoryWatcher(path: directory.base)
        guard ServiceSuspension.read(name, in: directory) == nil,
            case .acquired(let lock)? = try NameLock.tryAcquire("\(directory.base)/\(name).activating", create: true)
        else {
            // Suspended, or another process is starting it: wait for that instance.
            return try await self.waitForService(name, timeout: timeout)
        }
        defer { lock.release() }
        // It may have come up between the first look and the lock.
        if let info = self.liveRecord(name, in: directory) { return info }
        let pid = try ActivatedProcesses.shared.spawn(activation, bus: self.directory)
        while true {
            if let info = self.liveRecord(name, in: directory) { return info }
            if let status = ActivatedProcesses.shared.finishedStatus(of: pid) {
                throw IntercomError(
                    .serviceNotFound,
                    "activating '\(name)': \(activation.executable) (pid \(pid)) \(ProcessExitDescription(status)) before it served the name; \(activation.outputHint)")
            }
            let remaining = deadline - .now
            guard remaining > .zero else {
                throw IntercomError(
                    .timeout, "activating '\(name)': \(activation.executable) (pid \(pid)) did not serve the name within \(timeout) (it is still running: it must serve '\(name)' on bus \(self.directory)); \(activation.outputHint)")
            }
            if Task.isCancelled { throw IntercomError(.cancelled, "stopped waiting for '\(name)' to start") }
            // Directory changes wake it at once; an early exit is noticed within 50 ms.
            await watcher.waitForChange(upTo: min(remaining, .milliseconds(50)))
        }
    }

    /// Whether an absent service `name` should be activated before connecting.
    func shouldActivate(_ name: String, in directory: BusDirectory) -> Bool {
        self.activations[name] != nil && self.liveRecord(name, in: directory) == nil
    }
}

/// "exited with status 3", "was killed by signal 9".
private func ProcessExitDescription(_ status: Int32) -> String {
    let signal = status & 0x7f
    return signal == 0 ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(signal)"
}

/// The processes this process activated, each reaped by a thread of its own
/// (activations are rare; the thread blocks in `waitpid` and ends with the process).
final class ActivatedProcesses: Sendable {
    static let shared = ActivatedProcesses()

    private struct State {
        /// nil while running, else the wait status.
        var statuses: [Int32: Int32?] = [:]
        var waiters: [Int32: [CheckedContinuation<Int32?, Never>]] = [:]
    }

    private let state = Locked(State())

    /// Starts `activation` in a session of its own.
    func spawn(_ activation: ServiceActivation, bus directory: String) throws(IntercomError) -> Int32 {
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in activation.environment { environment[key] = value }
        environment["INTERCOM_BUS_DIR"] = directory
        let pid = try SessionSpawn.start(
            activation.executable, arguments: activation.arguments,
            environment: environment.map { "\($0.key)=\($0.value)" }, output: activation.logFile)
        // Known before the reaper starts, so its status has a place to go.
        self.state.withLock { $0.statuses[pid] = .some(nil) }
        do {
            try KernelThread.start(named: "icom-reap-\(pid)") { self.reap(pid) }
        } catch {
            // No thread to wait with: the process runs on; its exit is not reported here.
            self.state.withLock { $0.statuses[pid] = nil }
        }
        return pid
    }

    private func reap(_ pid: Int32) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let waiters = self.state.withLock { state -> [CheckedContinuation<Int32?, Never>] in
            state.statuses[pid] = .some(status)
            return state.waiters.removeValue(forKey: pid) ?? []
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }

    /// The wait status if `pid` (activated here) has exited.
    func finishedStatus(of pid: Int32) -> Int32? {
        self.state.withLock { $0.statuses[pid] ?? nil }
    }

    func exitStatus(of pid: Int32) async -> Int32? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32?, Never>) in
            let now = self.state.withLock { state -> Int32?? in
                guard let entry = state.statuses[pid] else { return .some(nil) }  // not ours
                if let status = entry { return .some(status) }
                state.waiters[pid, default: []].append(continuation)
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}
