import Foundation
import Intercom
import IntercomTestHelper
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How a test connects to its helper child.
enum TransportKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case socketpair
    case unix
    var testDescription: String { self.rawValue }
}

/// A real `IntercomTestHelper` process connected to this test process.
final class ChildProcess: Sendable {
    let process: Process
    let peer: Peer
    let listener: PeerListener?
    private let exit: AsyncStream<Int32>

    var pid: Int32 { self.process.processIdentifier }

    /// Path of the helper executable, next to the test bundle.
    static var helperPath: String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var directory = exe.deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("IntercomTestHelper").path),
            directory.path != "/"
        {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("IntercomTestHelper").path
    }

    static func configuration(_ configure: (inout Peer.Configuration) -> Void = { _ in }) -> Peer.Configuration {
        var configuration = Peer.Configuration(name: "test-parent")
        configuration.remoteErrors.register(HelperError.self)
        configure(&configuration)
        return configuration
    }

    /// Spawns the helper and completes the handshake with it.
    static func spawn(
        _ kind: TransportKind, arguments: [String] = [], router: Router? = nil,
        configuration: Peer.Configuration = ChildProcess.configuration()
    ) async throws -> ChildProcess {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.helperPath)
        let (exit, exitContinuation) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { process in
            exitContinuation.yield(process.terminationStatus)
            exitContinuation.finish()
        }
        switch kind {
        case .socketpair:
            let sockets = try SocketPair()
            process.arguments = arguments
            process.standardInput = FileHandle(fileDescriptor: sockets.second, closeOnDealloc: false)
            if arguments.contains("--stdio") {
                process.standardOutput = FileHandle(fileDescriptor: sockets.second, closeOnDealloc: false)
            }
            try process.run()
            close(sockets.second)
            let peer = try await Peer.adopt(fileDescriptor: sockets.first, router: router, configuration: configuration)
            return ChildProcess(process: process, peer: peer, listener: nil, exit: exit)
        case .unix:
            let path = TemporaryDirectory.shared.socketPath()
            let listener = try await PeerListener.listen(unixPath: path, router: router, configuration: configuration)
            process.arguments = ["--connect", path] + arguments
            process.standardInput = FileHandle.nullDevice
            try process.run()
            var iterator = listener.peers.makeAsyncIterator()
            guard let peer = await iterator.next() else { throw IntercomError(.closed, "listener closed") }
            return ChildProcess(process: process, peer: peer, listener: listener, exit: exit)
        }
    }

    private init(process: Process, peer: Peer, listener: PeerListener?, exit: AsyncStream<Int32>) {
        self.process = process
        self.peer = peer
        self.listener = listener
        self.exit = exit
    }

    /// Waits for the child to exit and returns its status.
    @discardableResult
    func waitForExit() async -> Int32 {
        for await status in self.exit { return status }
        return self.process.terminationStatus
    }

    func kill(_ signal: Int32 = SIGKILL) {
        _ = Glibc.kill(self.pid, signal)
    }

    /// Closes the connection (the child exits when it ends) and waits for the child.
    func shutdown() async {
        await self.peer.close()
        await self.listener?.close()
        let status = await self.waitForExit()
        _ = status
    }
}

/// Socket paths for this test run: `/tmp/icom-<pid>-<n>.sock` (short enough for
/// `sun_path`, no directory to clean up).
final class TemporaryDirectory: Sendable {
    static let shared = TemporaryDirectory()
    private let prefix = "icom-\(getpid())-"
    private let counter = Atomic<Int>(0)

    func socketPath() -> String {
        "/tmp/\(self.prefix)\(self.counter.add(1, ordering: .relaxed).newValue).sock"
    }

    /// Socket files of this run still present.
    var leftovers: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix(self.prefix) }
    }
}

/// What the test process holds open: descriptors and child processes.
enum ResourceAudit {
    static func openDescriptors() -> [String: String] {
        var result: [String: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            result[name] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)")) ?? "?"
        }
        return result
    }

    static func childPIDs() -> [Int32] {
        var pids: [Int32] = []
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            if let text = try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8) {
                pids += text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            }
        }
        return pids
    }

    private static let warmedUp = Mutex(false)

    /// Starts what is created once per process (event-loop threads, process
    /// monitoring) so it does not count as a leak.
    static func warmUp() async throws {
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
final class AuditGate: Sendable {
    static let shared = AuditGate()
    private let state = Mutex<(busy: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func acquire() async {
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

    func release() {
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
func withResourceCheck(_ body: () async throws -> Void) async throws {
    await AuditGate.shared.acquire()
    defer { AuditGate.shared.release() }
    try await ResourceAudit.warmUp()
    let before = ResourceAudit.openDescriptors()
    try await body()
    let after = ResourceAudit.openDescriptors()
    // Runtime-internal descriptors (libdispatch and Foundation run loops open an
    // epoll/eventfd/timerfd per worker thread, lazily) are not ours; every socket,
    // pipe and file is.
    let leaked = after.filter { before[$0.key] == nil && !$0.value.hasPrefix("anon_inode:") }
    #expect(leaked.isEmpty, "descriptors left open: \(leaked)")
    #expect(ResourceAudit.childPIDs().isEmpty, "child processes left running: \(ResourceAudit.childPIDs())")
    #expect(TemporaryDirectory.shared.leftovers.isEmpty, "socket files left: \(TemporaryDirectory.shared.leftovers)")
}
