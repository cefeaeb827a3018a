// Shared by every test module of the package: the resource audit must see the
// whole test process, so every test that starts processes or opens sockets
// takes the same gate, whichever module it is in.
public import Foundation
import Intercom
import Synchronization
import Testing

@_spi(IntercomInternals) internal import IntercomTransport

#if canImport(Glibc)
import Glibc
#endif

/// Socket paths for this test run: `/tmp/icom-<pid>-<n>.sock` (short enough for
/// `sun_path`, no directory to clean up).
public final class TemporaryDirectory: Sendable {
    public static let shared = TemporaryDirectory()
    private let prefix = "icom-\(getpid())-"
    private let counter = Atomic<Int>(0)

    public func socketPath() -> String {
        "/tmp/\(self.prefix)\(self.counter.add(1, ordering: .relaxed).newValue).sock"
    }

    /// Socket files of this run still present.
    public var leftovers: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix(self.prefix) }
    }
}

/// What the test process holds open: descriptors and child processes.
public enum ResourceAudit {
    public static func openDescriptors() -> [String: String] {
        var result: [String: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            // A descriptor gone by the time it is looked at (the listing's own
            // directory descriptor, for one) was not left open.
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)") else { continue }
            // A sanitizer opens its report file when it first reports, during some test.
            if let reports = Self.sanitizerReports, target.hasPrefix(reports) { continue }
            result[name] = target
        }
        // ...and it starts its symbolizer then, talking to it through two pipes
        // (seen as two pipes "left" by whichever test was running).
        let symbolizerPipes = Self.symbolizerPipes()
        return result.filter { !symbolizerPipes.contains($0.value) }
    }

    /// The pipes a sanitizer's `llvm-symbolizer` child holds (the other ends of
    /// those the sanitizer keeps in this process).
    private static func symbolizerPipes() -> Set<String> {
        guard Self.sanitizerReports != nil else { return [] }
        var pipes = Set<String>()
        for child in Self.children() where child.isSymbolizer {
            for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? [] {
                if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/fd/\(fd)"),
                    target.hasPrefix("pipe:")
                {
                    pipes.insert(target)
                }
            }
        }
        return pipes
    }

    /// Whether this process runs under a sanitizer of Scripts/sanitizers.sh
    /// (memory figures then include the sanitizer's shadow memory).
    public static var underSanitizer: Bool { Self.sanitizerReports != nil }

    /// The `log_path` a sanitizer run writes its reports to (Scripts/sanitizers.sh), if any.
    private static let sanitizerReports: String? = {
        let environment = ProcessInfo.processInfo.environment
        for options in [environment["TSAN_OPTIONS"], environment["ASAN_OPTIONS"]].compactMap({ $0 }) {
            for option in options.split(separator: " ") where option.hasPrefix("log_path=") {
                return String(option.dropFirst("log_path=".count))
            }
        }
        return nil
    }()

    /// Sends SIGKILL to `pids` and waits (up to 10 s) until they are reaped by
    /// whoever started them. Nothing tells of a reap, so this reads /proc every 10 ms.
    public static func killAndReap(_ pids: [Int32]) async {
        guard !pids.isEmpty else { return }
        for pid in pids { kill(pid, SIGKILL) }
        let deadline = ContinuousClock.now + .seconds(10)
        while !Set(Self.childPIDs()).isDisjoint(with: pids), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// This process's children, except a sanitizer's own symbolizer (a child
    /// it never reaps), which is not the test's.
    public static func childPIDs() -> [Int32] {
        Self.children().filter { !$0.isSymbolizer }.map(\.pid)
    }

    /// Every child of every thread of this process, with whether it is a sanitizer's `llvm-symbolizer`.
    private static func children() -> [(pid: Int32, isSymbolizer: Bool)] {
        var children: [(pid: Int32, isSymbolizer: Bool)] = []
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            guard let text = try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8) else { continue }
            for pid in text.split(separator: " ").compactMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
                let name = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
                children.append((pid, name?.hasPrefix("llvm-symbolizer") == true))
            }
        }
        return children
    }

    private static let warmedUp = Locked(false)

    /// Starts what is created once per process (event-loop threads, process
    /// monitoring) so it does not count as a leak.
    public static func warmUp() async throws {
        guard !Self.warmedUp.withLock({ $0 }) else { return }
        // libdispatch opens its epoll, eventfd and timerfd on first use of a timer.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(1)) { continuation.resume() }
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/true")
        process.standardInput = FileHandle.nullDevice
        let (exited, continuation) = AsyncStream.makeStream(of: Void.self)
        process.terminationHandler = { _ in continuation.finish() }
        try process.run()
        for await _ in exited {}
        // Enough connections that every event loop of the shared group has started
        // (each loop opens its epoll, eventfd and timerfd on first use).
        for _ in 0..<8 {
            let (a, b) = try await Peer.pair()
            _ = try await a.ping()
            await a.close()
            await b.close()
        }
        Self.warmedUp.withLock { $0 = true }
    }
}

/// One audited test at a time across all suites (the audit reads process-wide state).
public final class AuditGate: Sendable {
    public static let shared = AuditGate()
    private let state = Locked<(busy: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = self.state.withLock { state -> Bool in
                if !state.busy {
                    state.busy = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    public func release() {
        let next = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.busy = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// Runs `body` and checks it left no descriptors, child processes or socket files behind.
///
/// Child processes a test leaves behind — most often because it failed half way,
/// before it stopped them — are killed and waited for, so one failure does not
/// fail every audited test after it. A test still running after `hangLimit` is
/// reported by name and ends the whole test run (see ``HangWatchdog``).
/// `INTERCOM_TEST_HANG_LIMIT` (seconds) overrides the limit for a whole run:
/// under a sanitizer every process starts and runs several times slower.
public func withResourceCheck(
    hangLimit: Duration = .seconds(300), _ body: () async throws -> Void
) async throws {
    let hangLimit = ProcessInfo.processInfo.environment["INTERCOM_TEST_HANG_LIMIT"]
        .flatMap { Int($0) }.map { Duration.seconds($0) } ?? hangLimit
    let name = Test.current?.name ?? "an audited test"
    let trace = ProcessInfo.processInfo.environment["INTERCOM_GATE_TRACE"] != nil
    if trace { fputsStderr("GATE wait \(name) \(ContinuousClock.now)\n") }
    await AuditGate.shared.acquire()
    if trace { fputsStderr("GATE got \(name) \(ContinuousClock.now)\n") }
    defer {
        if trace { fputsStderr("GATE release \(name) \(ContinuousClock.now)\n") }
        AuditGate.shared.release()
    }
    try await ResourceAudit.warmUp()
    let watchdog = HangWatchdog(test: name, limit: hangLimit)
    defer { watchdog.disarm() }
    let before = ResourceAudit.openDescriptors()
    let outcome: Result<Void, any Error>
    do {
        try await body()
        outcome = .success(())
    } catch {
        outcome = .failure(error)
    }
    let children = ResourceAudit.childPIDs()
    #expect(children.isEmpty, "child processes left running: \(children) (now killed)")
    await ResourceAudit.killAndReap(children)
    try outcome.get()
    // Runtime-internal descriptors (libdispatch and Foundation run loops open an
    // epoll/eventfd/timerfd per worker thread, lazily) are not ours; every socket,
    // pipe and file is.
    func leakedDescriptors() -> [String: String] {
        ResourceAudit.openDescriptors().filter { before[$0.key] == nil && !$0.value.hasPrefix("anon_inode:") }
    }
    var leaked = leakedDescriptors()
    // Foundation's `Process` watches each child's exit through a socket pair of its
    // own and closes it on its manager thread *after* it reports the exit (the
    // termination handler runs, then `CFSocketInvalidate` closes the socket): for
    // a moment after a test saw its child exit, one socket is still open — longest
    // under a sanitizer, where it was seen twice. Nothing signals that close, so
    // leftover sockets (only sockets) are looked at again for up to 5 s.
    let settled = ContinuousClock.now + .seconds(5)
    while !leaked.isEmpty, leaked.values.allSatisfy({ $0.hasPrefix("socket:") }), ContinuousClock.now < settled {
        try? await Task.sleep(for: .milliseconds(10))
        leaked = leakedDescriptors()
    }
    #expect(leaked.isEmpty, "descriptors left open: \(leaked)")
    #expect(TemporaryDirectory.shared.leftovers.isEmpty, "socket files left: \(TemporaryDirectory.shared.leftovers)")
}

/// Writes `text` to standard error unbuffered (it must get out even if the process ends next).
func fputsStderr(_ text: String) {
    _ = Array(text.utf8).withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// Ends the test run when one audited test hangs.
///
/// Every audited test holds the ``AuditGate``, so one that never returns stops
/// all the others and the run waits until CI's time limit — with nothing in the
/// log that says which test it was. The watchdog fires on its own serial queue
/// (which libdispatch gives a thread even when the cooperative pool is blocked),
/// names the test on standard error, kills this process's children (so none
/// keeps the runner's output pipe open) and exits with status 3.
public final class HangWatchdog: Sendable {
    private static let queue = DispatchQueue(label: "intercom.tests.hang-watchdog")
    private let disarmed = Atomic<Bool>(false)

    /// Arms the watchdog for `test`, to fire after `limit`.
    public init(test: String, limit: Duration) {
        let (seconds, attoseconds) = limit.components
        let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
        Self.queue.asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
            guard !self.disarmed.load(ordering: .acquiring) else { return }
            let message = """

                ✘ HANG: "\(test)" is still running after \(limit): its child processes are killed and \
                the test run ends here (exit status 3), so that CI reports which test hung instead of \
                waiting for its own time limit.

                """
            fflush(nil)
            fputsStderr(message)
            for pid in ResourceAudit.childPIDs() { kill(pid, SIGKILL) }
            fflush(nil)
            _exit(3)
        }
    }

    /// The test returned: the watchdog never fires.
    public func disarm() { self.disarmed.store(true, ordering: .releasing) }
}

/// A child started with Foundation's `Process` whose exit a test can await.
public final class WatchedProcess: Sendable {
    /// The process (configure it before ``run()``).
    public let process: Process
    private let exit: AsyncStream<Int32>

    /// Watches `process`, which must not be running yet.
    public init(_ process: Process) {
        let (exit, continuation) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { process in
            continuation.yield(process.terminationStatus)
            continuation.finish()
        }
        self.process = process
        self.exit = exit
    }

    /// Starts it.
    public func run() throws { try self.process.run() }

    /// Its pid.
    public var pid: Int32 { self.process.processIdentifier }

    /// Waits for it to exit (it is reaped by then) and returns its status: the
    /// exit code, or the signal that ended it.
    ///
    /// A process still running after `timeout` fails the test, is killed and
    /// reaped here. So is one that ended without Foundation noticing (seen
    /// under ThreadSanitizer: a child whose sanitizer runtime crashed in a fork
    /// stayed a zombie and its termination handler never ran), so a lost exit
    /// fails one test instead of hanging the run.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(120)) async -> Int32 {
        enum Outcome { case exited(Int32), reportedBefore, timedOut }
        let exit = self.exit
        let outcome = await withTaskGroup(of: Outcome.self) { group -> Outcome in
            group.addTask {
                for await status in exit { return .exited(status) }
                // The stream ended without a status: an earlier wait took it.
                return .reportedBefore
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return .timedOut
            }
            let first = await group.next() ?? .timedOut
            group.cancelAll()
            return first
        }
        switch outcome {
        case .exited(let status): return status
        case .reportedBefore where !self.process.isRunning: return self.process.terminationStatus
        case .reportedBefore, .timedOut: break  // (still running after an earlier wait timed out)
        }
        let pid = self.pid
        Issue.record("process \(pid) did not exit (or its exit went unnoticed) within \(timeout); killed")
        _ = Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        if waitpid(pid, &status, 0) == pid {
            return status & 0x7f == 0 ? (status >> 8) & 0xff : status & 0x7f
        }
        // Foundation reaped it meanwhile: its handler has the status.
        return self.process.terminationStatus
    }

    /// Sends it `signal`.
    public func kill(_ signal: Int32 = SIGKILL) {
        _ = Glibc.kill(self.pid, signal)
    }
}
