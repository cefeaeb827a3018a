// A real child process for the tests: it connects back to the test process
// (over an inherited socket on standard input, or a Unix socket path) and
// serves the handlers the tests call. Logs go to standard error.
import Dispatch
import Foundation
import CIntercomShims
import Intercom
import IntercomWire
import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals
import Synchronization

#if canImport(Glibc)
import Glibc
@_spi(IntercomInternals) internal import IntercomTransport
#endif

struct Options {
    var connectPath: String?
    /// For a `tls://` --connect: PEM files of this side's certificate, key and trusted CA.
    var tlsFiles: (certificate: String?, key: String?, ca: String?) = (nil, nil, nil)
    /// For a `tcp://` --connect: allow plain TCP.
    var plainTCP = false
    var concurrency = 64
    var stall = false
    var stdio = false
    var handlerOnConnectionThread = false
    var customCodec = false
    var compressAbove: Int?
    var metrics = false
    var tracing = false
    /// Serve on a bus instead of connecting to the test: `--serve NAME --bus DIR`.
    var serveName: String?
    var busDirectory: String?
    var replace = false
    var replaceTimeoutMilliseconds = 10_000
    /// Where to write this process's CPU seconds if it fails to claim its name.
    var cpuReportPath: String?
    /// Process tests: exit at once with this code (a crash at start-up).
    var exitNow: Int32?
    /// Process tests: after the handshake, exit with this code / raise this signal.
    var exitAfterHandshake: Int32?
    var signalAfterHandshake: Int32?
    /// Process tests: ignore SIGTERM and keep running after the connection ends.
    var linger = false
    /// Process tests: spawn a worker of our own and report its pid as message "grandchild".
    var spawnGrandchild = false
    /// With --serve: run the service and a supervised worker in a ServiceGroup (SIGTERM stops both).
    var lifecycle = false
    /// Host distributed actors on the bus service NAME: `--actors NAME --bus DIR`.
    var actorsName: String?
    /// With --actors: also listen on this address (with the --tls-* files for `tls://`).
    var listenAddress: String?
    /// Echo records between two shared-memory rings mapped from standard input.
    var ringEchoCapacity: Int?
    /// Hardening tests: the soft limit of open descriptors (`ulimit -n`).
    var descriptorLimit: Int?
    /// Hardening tests: the connection's ``Peer/Configuration/requestByteBudget``.
    var requestByteBudget: Int?
    /// Hardening tests: the connection's inbox bounds (messages, bytes).
    var inboxMessages: Int?
    var inboxBytes: Int?
    /// Hardening tests: listen on PATH as a plain socket (no Intercom), accept one
    /// client, print how many bytes it sent before it closed, and exit.
    var countBytesAt: String?
    /// Reliability battery: `--churn COUNT --bus DIR --name NAME [--abrupt]`:
    /// COUNT connect/call/close cycles against the service NAME, then exit 0.
    var churnCount: Int?
    var abrupt = false
    /// With --churn 1: after the call, exit at once without closing (the
    /// process vanishes mid-connection, as a crash would).
    var vanish = false
    /// Reliability battery: `--scale N --serve NAME --bus DIR`: connect-and-call
    /// times with 10 and with N idle connections open to the service NAME.
    var scaleCount: Int?

    init(_ arguments: [String]) {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--connect": self.connectPath = iterator.next()
            case "--tls-cert": self.tlsFiles.certificate = iterator.next()
            case "--tls-key": self.tlsFiles.key = iterator.next()
            case "--tls-ca": self.tlsFiles.ca = iterator.next()
            case "--plain-tcp": self.plainTCP = true
            case "--concurrency": self.concurrency = Int(iterator.next() ?? "") ?? 64
            case "--stall": self.stall = true
            case "--stdio": self.stdio = true
            case "--connection-thread": self.handlerOnConnectionThread = true
            case "--custom-codec": self.customCodec = true
            case "--compress": self.compressAbove = Int(iterator.next() ?? "")
            case "--metrics": self.metrics = true
            case "--tracing": self.tracing = true
            case "--serve": self.serveName = iterator.next()
            case "--bus": self.busDirectory = iterator.next()
            case "--replace": self.replace = true
            case "--replace-timeout-ms": self.replaceTimeoutMilliseconds = Int(iterator.next() ?? "") ?? 10_000
            case "--cpu-report": self.cpuReportPath = iterator.next()
            case "--exit-now": self.exitNow = Int32(iterator.next() ?? "")
            case "--exit-after-handshake": self.exitAfterHandshake = Int32(iterator.next() ?? "")
            case "--signal-after-handshake": self.signalAfterHandshake = Int32(iterator.next() ?? "")
            case "--linger": self.linger = true
            case "--spawn-grandchild": self.spawnGrandchild = true
            case "--lifecycle": self.lifecycle = true
            case "--actors": self.actorsName = iterator.next()
            case "--listen": self.listenAddress = iterator.next()
            case "--ring-echo": self.ringEchoCapacity = Int(iterator.next() ?? "")
            case "--nofile": self.descriptorLimit = Int(iterator.next() ?? "")
            case "--request-budget": self.requestByteBudget = Int(iterator.next() ?? "")
            case "--inbox-messages": self.inboxMessages = Int(iterator.next() ?? "")
            case "--inbox-bytes": self.inboxBytes = Int(iterator.next() ?? "")
            case "--count-bytes-at": self.countBytesAt = iterator.next()
            case "--churn": self.churnCount = Int(iterator.next() ?? "")
            case "--abrupt": self.abrupt = true
            case "--vanish": self.vanish = true
            case "--scale": self.scaleCount = Int(iterator.next() ?? "")
            default: fatalError("unknown argument \(argument)")
            }
        }
    }
}

/// A plain (not Codable) error: it reaches the caller as type name + message.
struct PlainError: Error, CustomStringConvertible {
    var detail: String
    var description: String { "plain failure: \(self.detail)" }
}

let activeHandlers = Atomic<Int>(0)
let maxActiveHandlers = Atomic<Int>(0)

func makeRouter() throws -> Router {
    let router = Router()
    try router.register("camera.exposure.set") { (request: SetExposure, _) in
        Ack(ok: request.ms > 0, appliedMs: request.ms)
    }
    try router.register("math.add") { (request: AddRequest, _) in request.a + request.b }
    try registerStreamHandlers(on: router)
    try registerMetricsHandlers(on: router)
    try registerDescriptorHandlers(on: router)
    try router.register("echo.bytes") { (bytes: [UInt8], _) in bytes }
    try router.register("peer.pid") { (_: Int, _) in Int(getpid()) }
    // Who called, as this side's kernel says ([pid, uid]; [] when it does not know).
    try router.register("peer.caller") { (_: Int, context: CallContext) -> [Int] in
        context.remote.credentials.map { [Int($0.pid), Int($0.uid)] } ?? []
    }
    try router.register("fail.typed") { (reason: String, _) -> Int in
        throw HelperError.refused(reason: reason, code: 42)
    }
    try router.register("fail.plain") { (detail: String, _) -> Int in
        throw PlainError(detail: detail)
    }
    // Waits until cancelled (by the caller's cancel frame or by the deadline in the
    // frame), then tells the caller what it observed.
    try router.register("work.slow") { (_: Int, context: CallContext) -> Int in
        let budget = context.remainingTime ?? .zero
        try await context.peer.send("work.started", Int(context.callID))
        let budgetMs = Int(budget.components.seconds * 1000 + budget.components.attoseconds / 1_000_000_000_000_000)
        do {
            try await waitUntilCancelled()
        } catch {
            try? await context.peer.send(
                "observed.cancelled", CancelReport(callID: context.callID, budgetMs: budgetMs))
            throw error
        }
        return 0
    }
    // Simulated work of `ms` milliseconds; returns how many handlers ran at once at most.
    try router.register("probe.concurrency") { (ms: Int, _) -> Int in
        let now = activeHandlers.add(1, ordering: .sequentiallyConsistent).newValue
        maxActiveHandlers.raise(to: now)
        await simulateWork(milliseconds: ms)
        activeHandlers.subtract(1, ordering: .sequentiallyConsistent)
        return maxActiveHandlers.load(ordering: .sequentiallyConsistent)
    }
    try router.register("probe.reset") { (_: Int, _) -> Int in
        maxActiveHandlers.store(0, ordering: .sequentiallyConsistent)
        return 0
    }
    // Calls back into the caller while its call is in flight.
    try router.register("callback.double") { (value: Int, context: CallContext) -> Int in
        let doubled = try await context.peer.call("parent.double", value, returning: Int.self, timeout: .seconds(10))
        return doubled + 1
    }
    try router.register("hang") { (_: Int, context: CallContext) -> Int in
        try await context.peer.send("hang.started", Int(context.callID))
        try await waitUntilCancelled()
        return 0
    }
    try router.register("pool.echo") { (bytes: ByteBuffer, _) -> PooledEcho in
        #if os(Linux)
        PooledEcho(bytes: bytes, receivedInPlace: isInSharedMemoryPool(bytes))
        #else
        PooledEcho(bytes: bytes, receivedInPlace: false)
        #endif
    }
    try router.register("survivor.load") { (plan: SurvivorPlan, context: CallContext) -> SurvivorReport in
        try await runSurvivor(plan, test: context.peer)
    }
    // Sends `count` notes, then closes the connection and exits.
    try router.register("burst.then.exit") { (count: Int, context: CallContext) in
        for index in 0..<count {
            try await context.peer.send("burst", Note(index: index, text: "note \(index)"))
        }
        await context.peer.close()
        exit(0)
    }
    return router
}

/// The survivor's side of the test that kills the *other* process of a
/// connection: reach the victim, keep four lanes of calls (16 B … 2 MB) and one
/// hanging call in flight, tell the test "armed" after `killAfter` calls, and
/// report how and when the pending calls ended once the victim is gone.
func runSurvivor(_ plan: SurvivorPlan, test: Peer) async throws -> SurvivorReport {
    let victim: Peer
    var listener: PeerListener?
    switch plan.role {
    case .connect:
        victim = try await Bus(directory: plan.busDirectory).connect(to: plan.name, timeout: .seconds(10))
    case .listen:
        let accepting = try await PeerListener.listen(unixPath: plan.path)
        listener = accepting
        try await test.send("survivor.listening", 0)
        var peers = accepting.peers.makeAsyncIterator()
        guard let peer = await peers.next() else { throw IntercomError(.closed, "the listener closed") }
        victim = peer
    }
    let load = CallLoad()
    try await withThrowingTaskGroup(of: Void.self) { group in
        load.start(on: victim, in: &group)
        _ = try await victim.receiveMessage(timeout: .seconds(10))  // hang.started
        await load.waitUntil(completed: plan.killAfter)
        try await test.send("survivor.armed", 0)
        try await group.waitForAll()
    }
    let wasSharedMemory = victim.isSharedMemory
    await victim.close()
    await listener?.close()
    let ended = load.outcomes.withLock { $0 }
    return SurvivorReport(codes: ended.map { $0.code?.name ?? "none" }, failedAtNanos: ended.map(\.atNanos), wasSharedMemory: wasSharedMemory)
}

/// Suspends until the task is cancelled, then throws `CancellationError`.
func waitUntilCancelled() async throws {
    let (never, continuation) = AsyncStream.makeStream(of: Never.self)
    // Iterating an AsyncStream ends when the iterating task is cancelled.
    for await _ in never {}
    continuation.finish()
    try Task.checkCancellation()
}

/// Stands in for a handler's real work: completes after `milliseconds`.
func simulateWork(milliseconds: Int) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(milliseconds)) { continuation.resume() }
    }
}

extension Atomic where Value == Int {
    func raise(to value: Int) {
        var current = self.load(ordering: .relaxed)
        while value > current {
            let (exchanged, original) = self.compareExchange(expected: current, desired: value, ordering: .sequentiallyConsistent)
            if exchanged { return }
            current = original
        }
    }
}

/// The self-pipe that carries SIGUSR1 out of the signal handler.
nonisolated(unsafe) var signalPipe: [Int32] = [-1, -1]

/// Catches SIGUSR1 from now on (before the connection exists, so an early signal
/// cannot kill the process).
func catchSIGUSR1() {
    _ = pipe(&signalPipe)
    signal(SIGUSR1) { _ in
        var byte: UInt8 = 1
        _ = write(signalPipe[1], &byte, 1)
    }
}

/// Resumes once SIGUSR1 has arrived (the test's "start reading now").
func waitForSIGUSR1() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        Thread.detachNewThread {
            var byte: UInt8 = 0
            while read(signalPipe[0], &byte, 1) < 0 && errno == EINTR {}
            continuation.resume()
        }
    }
}

/// A helper never outlives the process that started it: a test that fails half
/// way, or a test process killed by a watchdog, must not leave services running
/// (they would hold the test runner's output pipe open, and CI would wait for it
/// forever). A pidfd becomes readable when the parent exits; one thread waits on it.
func exitWhenParentExits() {
    let parent = getppid()
    let fd = c_intercom_pidfd_open(parent)
    guard fd >= 0 else { return }
    // The parent may have exited before the pidfd was opened (we were reparented).
    if getppid() != parent { _exit(70) }
    Thread.detachNewThread {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&entry, 1, -1) < 0 && errno == EINTR {}
        _exit(70)
    }
}

@main
struct Helper {
    static func main() async throws {
        // The descriptors this process was started with, before it opens any itself.
        let inherited = openDescriptors()
        exitWhenParentExits()
        let options = Options(CommandLine.arguments)
        if let code = options.exitNow { exit(code) }
        if let capacity = options.ringEchoCapacity { ringEcho(capacity: capacity) }
        if let path = options.countBytesAt { countBytes(at: path) }
        if let limit = options.descriptorLimit {
            var limits = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
            limits.rlim_cur = rlim_t(limit)
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
        }
        if options.linger { signal(SIGTERM, SIG_IGN) }
        if options.stall { catchSIGUSR1() }
        let router = try makeRouter()
        var configuration = Peer.Configuration(name: "test-helper")
        configuration.maxConcurrentHandlers = options.concurrency
        configuration.remoteErrors.register(HelperError.self)
        if options.stall { configuration.inboxCapacity = 16 }
        if options.handlerOnConnectionThread { configuration.handlerExecution = .connectionThread }
        if options.customCodec { configuration.customCodecs = [MarkedJSONCodec()] }
        if let threshold = options.compressAbove { configuration.compression = .deflate(threshold: threshold) }
        if options.metrics { configuration.metrics = .factory(helperMetrics) }
        if options.tracing { configuration.tracing = .tracer(helperTracer) }
        if let budget = options.requestByteBudget { configuration.requestByteBudget = budget }
        if let messages = options.inboxMessages { configuration.inboxCapacity = messages }
        if let bytes = options.inboxBytes { configuration.inboxByteCapacity = bytes }

        if let count = options.scaleCount, let name = options.serveName, let directory = options.busDirectory {
            try await scale(count: count, name: name, directory: directory)
        }
        if let count = options.churnCount, let name = options.serveName, let directory = options.busDirectory {
            try await churn(count: count, name: name, directory: directory, abrupt: options.abrupt, vanish: options.vanish)
        }
        if let name = options.actorsName, let directory = options.busDirectory {
            var configuration = Peer.Configuration(name: name)
            var addresses: [Endpoint] = []
            if let address = options.listenAddress {
                addresses.append(try Endpoint(parsing: address))
                if let certificate = options.tlsFiles.certificate, let key = options.tlsFiles.key, let ca = options.tlsFiles.ca {
                    configuration.tls = try TLSOptions.pemFiles(certificate: certificate, privateKey: key, trustRoots: ca)
                }
            }
            try await serveActors(name: name, directory: directory, configuration: configuration, addresses: addresses)
        }
        if let name = options.serveName, let directory = options.busDirectory {
            try await serveOnBus(name: name, directory: directory, router: router, options: options, configuration: configuration)
        }
        try router.register("fds.inherited") { (_: Int, _: CallContext) -> [Int] in inherited }
        let peer: Peer
        if Peer.hasParent {
            peer = try await Peer.parent(router: router, configuration: configuration)
        } else if let path = options.connectPath {
            var configuration = configuration
            configuration.allowsPlainTCP = options.plainTCP
            if let certificate = options.tlsFiles.certificate, let key = options.tlsFiles.key, let ca = options.tlsFiles.ca {
                configuration.tls = try TLSOptions.pemFiles(certificate: certificate, privateKey: key, trustRoots: ca)
            }
            peer = try await Peer.connect(to: try Endpoint(parsing: path), router: router, configuration: configuration)
        } else if options.stdio {
            peer = try await Peer.standardIO(router: router, configuration: configuration)
        } else {
            peer = try await Peer.adopt(fileDescriptor: 0, router: router, configuration: configuration)
        }
        if options.stall { await waitForSIGUSR1() }
        if let code = options.exitAfterHandshake { exit(code) }
        if let signal = options.signalAfterHandshake { raise(signal) }
        var grandchild: Worker?
        if options.spawnGrandchild {
            let spec = WorkerSpec(executablePath: CommandLine.arguments[0], arguments: ["--linger"])
            let worker = try await Worker.spawn(spec)
            grandchild = worker
            try await peer.send("grandchild", Int(worker.pid))
        }
        // Unrouted messages: echo notes back (reversed), count the rest; end with the connection.
        var received = 0
        do {
            for try await note in peer.messages(as: Note.self) {
                received += 1
                if note.text == "count?" {
                    try await peer.send("count", received)
                } else if !options.stall {
                    // (A stalled reader only counts: echoing 2,000 notes at a parent that
                    // reads nothing until its sender finishes would deadlock both.)
                    try await peer.send("echo", Note(index: note.index, text: String(note.text.reversed())))
                }
            }
        } catch {
            // The connection ended: the test is done with this process.
        }
        if options.linger {
            // Ignore the goodbye as well: only SIGKILL ends this process.
            let (never, _) = AsyncStream.makeStream(of: Never.self)
            for await _ in never {}
        }
        _ = grandchild
        exit(0)
    }
}

/// Lets bus handlers reach the service, which exists only once it serves.
final class ServiceHolder: @unchecked Sendable {
    // Set before the service's record is written, so before any client finds it.
    var service: BusService?
}

/// `--serve NAME --bus DIR`: serves the test router (plus `events.burst`) under
/// NAME until asked to quit, then exits 0.
func serveOnBus(name: String, directory: String, router: Router, options: Options, configuration: Peer.Configuration)
    async throws -> Never
{
    let holder = ServiceHolder()
    try router.register("events.burst") { (burst: Burst, _: CallContext) -> BurstTally in
        var tally = BurstTally(sent: 0, dropped: 0)
        for index in 0..<burst.count {
            guard let service = holder.service else { throw IntercomError(.closed, "not serving yet") }
            let report = try service.publish(burst.topic, index)
            tally.sent += report.sentTo.count
            tally.dropped += report.droppedFor.count
        }
        return tally
    }
    try router.handle(CameraExposureCommand.self) { command, _ in Ack(ok: command.ms > 0, appliedMs: command.ms) }
    try router.handle(SnapshotCommand.self) { _, _ in Int(getpid()) }
    try registerRestartHandlers(on: router, holder: holder)
    var configuration = configuration
    configuration.name = name
    if options.lifecycle {
        // A supervised worker (this executable again) and the bus service, both
        // stopped by SIGTERM through swift-service-lifecycle.
        let supervisor = Supervisor()
        supervisor.start(
            "worker", WorkerSpec(executablePath: CommandLine.arguments[0], environment: ["SWIFT_BACKTRACE": "enable=no"]))
        // The worker starts once the group runs the supervisor; the test asks once.
        try router.register("lifecycle.worker.pid") { (_: Int, _: CallContext) -> Int in
            for await event in supervisor.events {
                if case .started(_, let pid) = event { return Int(pid) }
            }
            return 0
        }
        let service = try await Bus(directory: directory).serve(name, router: router, configuration: configuration)
        holder.service = service
        let group = ServiceGroup(
            services: [service, supervisor], gracefulShutdownSignals: [.sigterm], logger: Logger(label: "test-helper"))
        try await group.run()
        exit(0)
    }
    // A worker spawned by a parent also keeps its parent connection (same handlers).
    let parent = Peer.hasParent ? try await Peer.parent(router: router, configuration: configuration) : nil
    let service: BusService
    do {
        service = try await Bus(directory: directory).serve(
            name, router: router, replace: options.replace,
            replaceTimeout: .milliseconds(options.replaceTimeoutMilliseconds), configuration: configuration)
    } catch {
        // The test reads how much CPU the claim cost (user + system seconds).
        guard let path = options.cpuReportPath else { throw error }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let seconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        try "\(seconds)".write(toFile: path, atomically: true, encoding: .utf8)
        exit(3)
    }
    holder.service = service
    await service.waitForQuit()
    await service.close()
    await parent?.close()
    exit(0)
}

/// The open descriptors (the one used to list them is left out).
func openDescriptors() -> [Int] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.compactMap { Int($0) }.filter { fcntl(Int32($0), F_GETFD) >= 0 }.sorted()
}

/// `--ring-echo CAPACITY`: standard input is a memfd holding two rings (to the
/// helper, then back); every record read from the first is written to the
/// second, until an empty record arrives. Exits 0, or 2 on a protocol error.
func ringEcho(capacity: Int) -> Never {
    let ringSize = SharedMemoryRing.size(capacity: capacity)
    do {
        let region = try SharedMemoryRegion(mapping: dup(0), size: 2 * ringSize)
        let inbound = try SharedMemoryRing.open(at: region.base, size: ringSize)
        let outbound = try SharedMemoryRing.open(at: region.base + ringSize, size: ringSize)
        var reader = SharedMemoryRing.ReaderState()
        var writer = SharedMemoryRing.WriterState()
        while true {
            guard let record = try inbound.read(state: &reader, until: .now + .seconds(60)) else { exit(3) }
            if record.isEmpty { exit(0) }
            try outbound.write(record, state: &writer)
        }
    } catch {
        FileHandle.standardError.write(Data("ring echo: \(error)\n".utf8))
        exit(2)
    }
}

/// `--count-bytes-at PATH`: a plain listening socket (a stand-in for a server
/// another user planted): accepts one client, writes how many bytes it sent until
/// it closed to PATH.count, and exits 0.
func countBytes(at path: String) -> Never {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    // Bound under a temporary name and renamed once listening: the socket appears
    // at PATH only when a connect there succeeds.
    let bound = UnixSocket.withAddress(path + ".tmp") { bind(fd, $0, $1) }
    guard bound == 0, listen(fd, 4) == 0, rename(path + ".tmp", path) == 0 else {
        FileHandle.standardError.write(Data("count-bytes: cannot listen on \(path): \(errno)\n".utf8))
        exit(2)
    }
    let client = accept(fd, nil, nil)
    var total = 0
    var chunk = [UInt8](repeating: 0, count: 65536)
    while client >= 0 {
        let n = chunk.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        total += n
    }
    // A file, not standard output: a pipe's write end can be inherited by other
    // children of the test process, and then its reader never sees the end.
    _ = FileManager.default.createFile(atPath: path + ".count", contents: Data("\(total)".utf8))
    exit(0)
}
