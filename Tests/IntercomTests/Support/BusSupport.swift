import Foundation
import Intercom
import IntercomTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A private bus directory for one test: `/tmp/icb-<pid>-<n>` (0700), removed
/// afterwards — after checking that the services left nothing behind.
final class TemporaryBus: Sendable {
    private static let counter = Atomic<Int>(0)
    let directory: String
    let bus: Bus

    init() {
        self.directory = "/tmp/icb-\(getpid())-\(Self.counter.add(1, ordering: .relaxed).newValue)"
        mkdir(self.directory, 0o700)
        self.bus = Bus(directory: self.directory)
    }

    /// The files in the bus directory.
    var files: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: self.directory)) ?? []).sorted()
    }

    /// Removes the directory (whatever is in it).
    func remove() {
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// Runs `body` with a fresh bus; expects the directory empty at the end, then removes it.
func withTemporaryBus(expectEmpty: Bool = true, _ body: (TemporaryBus) async throws -> Void) async throws {
    let bus = TemporaryBus()
    defer { bus.remove() }
    try await body(bus)
    if expectEmpty { #expect(bus.files.isEmpty, "files left on the bus: \(bus.files)") }
}

/// A helper process serving a name on a bus (`--serve NAME --bus DIR`), not
/// connected to the test: the test finds it through the bus like anyone would.
final class ServiceProcess: Sendable {
    let watched: WatchedProcess
    var process: Process { self.watched.process }
    var pid: Int32 { self.watched.pid }

    init(name: String, bus: TemporaryBus, arguments: [String] = []) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ChildProcess.helperPath)
        process.arguments = ["--serve", name, "--bus", bus.directory] + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        self.watched = WatchedProcess(process)
        try self.watched.run()
    }

    /// Waits for the process to exit; returns its exit status.
    @discardableResult
    func waitForExit() async -> Int32 { await self.watched.waitForExit() }

    func kill(_ signal: Int32 = SIGKILL) { self.watched.kill(signal) }
}
