import ArgumentParser
import Distributed
import Intercom
import IntercomTesting
import NIOCore
import Subprocess
import SystemPackage

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#endif

/// `intercom bench`: the scenarios of DESIGN.md between this process and a real child.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure call latency and message throughput between two processes (use a release build).")

    enum Transport: String, ExpressibleByArgument, CaseIterable {
        case socketpair, unix, shm, tcp, tls
    }

    enum Scenario: String, ExpressibleByArgument, CaseIterable {
        case S1, S2, S3, S4, S5, S6, all
    }

    @Option(
        help: """
            socketpair, unix (a named service on a private bus, found and connected through the bus) — both kept on \
            their socket — shm (a socket pair that moves to shared-memory rings), tcp or tls (the loopback address; \
            TLS 1.3 with certificates of a throwaway authority made for the run, both sides verified).
            """)
    var transport: Transport = .socketpair
    @Option(
        help: """
            S1 (64 B call round trip), S2 (one-way 64 B messages), S3 (1 MiB call), S4 (64 B calls, 32 in flight), \
            S6 (a stream of 64 B items from the server, items/s, sent one by one then --batch at a time), S5 (sporadic: 500 calls of 64 B, one every 2 ms, from a task on the global executor, then from one on the \
            connection's thread) or all.
            """)
    var scenario: Scenario = .all
    @Option(help: "Multiply the iteration counts (for quick runs use 0.1).") var scale: Double = 1
    @Option(help: "Microseconds between S5's calls (how long both sides stay idle).") var s5GapUs: Int = 2000
    @Option(help: "Messages (items) per send(contentsOf:) in the second S2 (S6) line.") var batch: Int = 64
    @Option(help: "MiB of each side's shared-memory buffer pool for frames of 64 KiB or more (0: none, they go through the ring).")
    var bufferPoolMib: Int = 32
    @Option(help: "Compress this side's payloads of at least this many bytes (deflate, level 1): see S3's text and random lines.")
    var compressAbove: Int?

    func validate() throws {
        guard self.scale.isFinite, self.scale >= 0.001, self.scale <= 1000 else {
            throw ValidationError("--scale must be a number from 0.001 to 1000; got \(self.scale)")
        }
        try requireCount(self.batch, option: "--batch", in: 1...65_536)
        try requireCount(self.bufferPoolMib, option: "--buffer-pool-mib", in: 0...1024)
        try requireCount(self.s5GapUs, option: "--s5-gap-us", in: 0...1_000_000)
    }

    func run() async throws {
        let compression = self.compressAbove.map { Compression.deflate(threshold: $0) } ?? .off
        let child = try await BenchChild.spawn(self.transport, bufferPoolMib: self.bufferPoolMib, compression: compression)
        let peer = child.peer
        let name = "intercom-\(self.transport.rawValue)"
        let scenarios: [Scenario] = self.scenario == .all ? [.S1, .S2, .S3, .S4, .S5, .S6] : [self.scenario]
        var lines: [String] = []
        /// Prints a result line as soon as it is measured and keeps it for the summary.
        func emit(_ line: String) {
            printLine(line)
            lines.append(line)
        }
        let over = "over \(self.transport.rawValue)"
        // The calling task runs on the connection's event loop: no thread hop per call.
        try await withTaskExecutorPreference(peer.executor) {
            for scenario in scenarios {
                progress("running \(scenario.rawValue) \(over)…")
                switch scenario {
                case .S1:
                    emit(try await s1(peer, name: name, n: self.count(20_000)))
                    progress("running S1 through a distributed actor \(over)…")
                    emit(try await s1Actor(peer, name: "intercom-actor-\(self.transport.rawValue)", n: self.count(20_000)))
                case .S2:
                    emit(try await s2(peer, name: name, n: self.count(1_000_000)))
                    progress("running S2 with send(contentsOf:), \(self.batch) messages per batch, \(over)…")
                    emit(try await s2(peer, name: "\(name)-batch\(self.batch)", n: self.count(4_000_000), batch: self.batch))
                case .S3:
                    emit(try await s3(peer, name: name, n: self.count(500), payload: [UInt8](repeating: 0x62, count: 1 << 20)))
                    progress("running S3 with a ByteBuffer payload (read in place from shared memory) \(over)…")
                    emit(
                        try await s3(
                            peer, name: "\(name)-bytebuffer", n: self.count(500), payload: ByteBuffer(repeating: 0x62, count: 1 << 20)))
                    // Log-like text (compresses ~30×) and random bytes (does not): what
                    // --compress-above does to data that shrinks and to data that does not.
                    let deflate = compression.isEnabled ? "-deflate\(compression.threshold)" : ""
                    progress("running S3 with text and random payloads\(deflate.isEmpty ? "" : ", compressed") \(over)…")
                    let line = Array("timestamp=1732790000 level=info camera=3 exposure_ms=12 gain=1.5 status=ok\n".utf8)
                    let text = (0..<(1 << 20)).map { line[$0 % line.count] }
                    emit(try await s3(peer, name: "\(name)-text\(deflate)", n: self.count(200), payload: text))
                    var generator = SystemRandomNumberGenerator()
                    let random = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
                    emit(try await s3(peer, name: "\(name)-random\(deflate)", n: self.count(200), payload: random))
                case .S4:
                    emit(try await s4(peer, name: name, n: self.count(100_000)))
                case .S5:
                    // Like a program that calls now and then: not on the connection's
                    // thread, and both sides idle between calls. Then the same from a
                    // task on the connection's thread: the difference is the hop back
                    // to the global executor per reply.
                    emit(try await withTaskExecutorPreference(globalConcurrentExecutor) { try await s5(peer, name: name, calls: self.count(500), gap: .microseconds(self.s5GapUs)) })
                    progress("running S5 from a task on the connection's thread \(over)…")
                    emit(try await s5(peer, name: "\(name)-on-connection-thread", calls: self.count(500), gap: .microseconds(self.s5GapUs)))
                case .S6:
                    emit(try await s6(peer, name: name, n: self.count(2_000_000)))
                    progress("running S6 with send(contentsOf:), \(self.batch) items per batch, \(over)…")
                    emit(try await s6(peer, name: "\(name)-batch\(self.batch)", n: self.count(8_000_000), batch: self.batch))
                case .all:
                    continue
                }
            }
        }
        await child.stop()
        printSummary(lines)
    }

    private func count(_ base: Int) -> Int { max(32, Int(Double(base) * self.scale)) }
}

private func percentile(_ sorted: [Duration], _ p: Double) -> Duration {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

private func microseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
}

private func seconds(_ d: Duration) -> Double { microseconds(d) / 1e6 }

let payload64 = [UInt8](repeating: 0x61, count: 64)

func s1(_ peer: Peer, name: String, n: Int) async throws -> String {
    try await measureRoundTrips(name: name, n: n) {
        _ = try await peer.call("bench.echo", payload64, returning: [UInt8].self)
    }
}

/// S1 again, as a distributed actor call (`echo.echo(bytes)`) on the same connection.
func s1Actor(_ peer: Peer, name: String, n: Int) async throws -> String {
    let system = IntercomActorSystem()
    system.register(peer, as: "bench")
    let echo = try BenchEchoActor.resolve(id: IntercomActorID(endpoint: "bench", name: "echo"), using: system)
    return try await measureRoundTrips(name: name, n: n) { _ = try await echo.echo(payload64) }
}

/// Times `n` sequential round trips after 2,000 warm-up ones; the S1 line.
func measureRoundTrips(name: String, n: Int, _ roundTrip: () async throws -> Void) async throws -> String {
    for _ in 0..<2000 { try await roundTrip() }
    var samples: [Duration] = []
    samples.reserveCapacity(n)
    let clock = ContinuousClock()
    let start = clock.now
    for _ in 0..<n {
        let t0 = clock.now
        try await roundTrip()
        samples.append(clock.now - t0)
    }
    let total = clock.now - start
    samples.sort()
    let median = fixed(microseconds(percentile(samples, 0.5)), 2)
    let p99 = fixed(microseconds(percentile(samples, 0.99)), 2)
    return "peer=\(name) scenario=S1 median_us=\(median) p99_us=\(p99) calls_per_s=\(fixed(Double(n) / seconds(total), 0)) n=\(n)"
}

/// S2: `n` one-way 64-byte messages, each its own `send` (`batch` 1) or in
/// `send(contentsOf:)` batches of `batch`; the receiver counts them.
func s2(_ peer: Peer, name: String, n: Int, batch: Int = 1) async throws -> String {
    _ = try await peer.call("bench.reset", 0, returning: Int.self)
    let clock = ContinuousClock()
    let start = clock.now
    if batch == 1 {
        for _ in 0..<n { try await peer.send(payload64) }
    } else {
        let messages = Array(repeating: payload64, count: batch)
        var sent = 0
        while sent < n {
            let count = min(batch, n - sent)
            try await peer.send(contentsOf: messages.prefix(count))
            sent += count
        }
    }
    // The receiver counts what it really received; the end marker comes after every
    // message on the stream, and the receiver answers it with its count.
    try await peer.send("bench.s2.end", 0)
    let received = try await peer.receive(as: Int.self, timeout: .seconds(120))
    let elapsed = clock.now - start
    guard received == n else { throw ValidationError("S2: sent \(n) messages, the receiver counted \(received)") }
    let rate = Double(received) / seconds(elapsed)
    if batch > 1 {
        return "peer=\(name) scenario=S2 msgs_per_s=\(fixed(rate, 0)) n=\(received) batch=\(batch)"
    }
    return "peer=\(name) scenario=S2 msgs_per_s=\(fixed(rate, 0)) n=\(received)"
}

/// 1 MiB calls answered with a Bool: as `[UInt8]` (decoded into an array on the
/// server) or as a `ByteBuffer` (a view of the frame on the server — over shared
/// memory, of the sender's buffer pool).
func s3<Payload: Encodable & Sendable>(_ peer: Peer, name: String, n: Int, payload big: Payload) async throws -> String {
    let method = Payload.self == ByteBuffer.self ? "bench.sink.buffer" : "bench.sink"
    for _ in 0..<20 { _ = try await peer.call(method, big, returning: Bool.self) }
    var samples: [Duration] = []
    let clock = ContinuousClock()
    for _ in 0..<n {
        let t0 = clock.now
        _ = try await peer.call(method, big, returning: Bool.self)
        samples.append(clock.now - t0)
    }
    samples.sort()
    let median = percentile(samples, 0.5)
    let gbPerSecond = Double(1 << 20) / (microseconds(median) * 1000)
    return "peer=\(name) scenario=S3 median_ms=\(fixed(microseconds(median) / 1000, 3)) gb_per_s=\(fixed(gbPerSecond, 3)) n=\(n)"
}

func s4(_ peer: Peer, name: String, n: Int) async throws -> String {
    let depth = 32
    let executor = peer.executor
    let clock = ContinuousClock()
    let start = clock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for worker in 0..<depth {
            let calls = n / depth + (worker < n % depth ? 1 : 0)
            group.addTask(executorPreference: executor) {
                for _ in 0..<calls { _ = try await peer.call("bench.echo", payload64, returning: [UInt8].self) }
            }
        }
        try await group.waitForAll()
    }
    let elapsed = clock.now - start
    return "peer=\(name) scenario=S4 calls_per_s=\(fixed(Double(n) / seconds(elapsed), 0)) depth=\(depth) n=\(n)"
}

/// S6: one stream of `n` 64 B items from the server, counted as they arrive.
/// S6: a stream of `n` 64-byte items from the server, sent one by one, or in
/// batches of `batch` with `send(contentsOf:)`.
func s6(_ peer: Peer, name: String, n: Int, batch: Int? = nil) async throws -> String {
    let clock = ContinuousClock()
    let start = clock.now
    var received = 0
    let items =
        batch.map { peer.stream("bench.stream.batch", [n, $0], of: [UInt8].self, timeout: .seconds(600)) }
        ?? peer.stream("bench.stream", n, of: [UInt8].self, timeout: .seconds(600))
    for try await item in items {
        received += item.count == 64 ? 1 : 0
    }
    let elapsed = clock.now - start
    guard received == n else { throw IntercomError(.invalidPayload, "S6 received \(received) of \(n) items") }
    return "peer=\(name) scenario=S6 items_per_s=\(fixed(Double(n) / seconds(elapsed), 0)) n=\(n)"
}

/// S5: 500 sporadic 64 B calls, one every 2 ms (the C reference's S5 line has the same shape).
func s5(_ peer: Peer, name: String, calls: Int = 500, gap: Duration = .milliseconds(2)) async throws -> String {
    var samples: [Duration] = []
    samples.reserveCapacity(calls)
    let clock = ContinuousClock()
    for _ in 0..<calls {
        try await Task.sleep(for: gap)
        let t0 = clock.now
        _ = try await peer.call("bench.echo", payload64, returning: [UInt8].self)
        samples.append(clock.now - t0)
    }
    samples.sort()
    let median = fixed(microseconds(percentile(samples, 0.5)), 2)
    let p99 = fixed(microseconds(percentile(samples, 0.99)), 2)
    return "peer=\(name) scenario=S5 median_us=\(median) p99_us=\(p99) gap_us=\(gap.components.seconds * 1_000_000 + gap.components.attoseconds / 1_000_000_000_000) n=\(calls)"
}

func printSummary(_ lines: [String]) {
    progress("\nsummary")
    progress("scenario  result")
    for line in lines {
        let fields = line.split(separator: " ")
        let scenario = String(fields.first { $0.hasPrefix("scenario=") }?.dropFirst(9) ?? "?")
        let rest = fields.filter { !$0.hasPrefix("peer=") && !$0.hasPrefix("scenario=") }.joined(separator: "  ")
        progress(scenario + String(repeating: " ", count: max(0, 8 - scenario.count)) + "  \(rest)")
    }
}

/// The benchmark's server: a second copy of this executable — a ``Worker`` on
/// a socket pair, or (over a Unix socket) a process serving a name on a private bus.
struct BenchChild {
    let peer: Peer
    let worker: Worker?
    /// The `--serve` child's run, ended when it exits.
    let server: Task<Void, any Error>?
    let busDirectory: String?
    /// The listener the `tcp`/`tls` child connected to.
    var listener: PeerListener? = nil

    static func spawn(_ transport: Bench.Transport, bufferPoolMib: Int, compression: Compression = .off) async throws -> BenchChild {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        var configuration = Peer.Configuration(name: "intercom-bench")
        configuration.compression = compression
        configuration.handlerExecution = .connectionThread
        // The socket kinds measure the socket: this side does not offer shared memory.
        configuration.sharedMemory.isEnabled = transport == .shm
        configuration.sharedMemory.bufferPoolSize = bufferPoolMib << 20
        let poolArguments = ["--buffer-pool-mib", String(bufferPoolMib)]
        switch transport {
        case .socketpair, .shm:
            let worker = try await Worker.spawn(
                WorkerSpec(executablePath: executable, arguments: ["bench-server"] + poolArguments), configuration: configuration)
            guard worker.peer.isSharedMemory == (transport == .shm) else {
                _ = await worker.stop()
                throw ValidationError("the benchmark connection is \(worker.peer.isSharedMemory ? "" : "not ")on shared memory")
            }
            return BenchChild(peer: worker.peer, worker: worker, server: nil, busDirectory: nil)
        case .unix:
            // The server claims a name on a private bus; this side finds it there like any client.
            let directory = "/tmp/intercom-bench-\(getpid())"
            mkdir(directory, 0o700)
            let arguments = ["bench-server", "--serve", "bench", "--bus-directory", directory] + poolArguments
            let server = Task {
                _ = try await Subprocess.run(
                    .path(FilePath(executable)), arguments: Arguments(arguments),
                    output: .currentStandardOutput, error: .currentStandardError)
            }
            let peer = try await Bus(directory: directory).connect(
                to: "bench", timeout: .seconds(30), configuration: configuration)
            return BenchChild(peer: peer, worker: nil, server: server, busDirectory: directory)
        case .tcp, .tls:
            return try await Self.spawnOverNetwork(tls: transport == .tls, executable: executable, configuration: configuration)
        }
    }

    /// Listens on a loopback port and starts the child connecting to it; for TLS
    /// both sides get certificates of an authority made for this run (the
    /// child's files live in a private directory until it connected).
    private static func spawnOverNetwork(tls: Bool, executable: String, configuration: Peer.Configuration) async throws -> BenchChild {
        var configuration = configuration
        var childArguments = ["bench-server"]
        let directory = "/tmp/intercom-bench-\(getpid())"
        mkdir(directory, 0o700)
        defer {
            try? FileManager.default.removeItem(atPath: directory)
        }
        let endpoint: Endpoint
        if tls {
            let authority = try TestCertificateAuthority(name: "intercom bench \(getpid())")
            configuration.tls = try authority.options(commonName: "intercom-bench")
            let files = try authority.writeFiles(commonName: "intercom-bench-server", into: directory)
            childArguments += ["--tls-cert", files.certificate, "--tls-key", files.key, "--tls-ca", files.ca]
            endpoint = .tls(host: "127.0.0.1", port: 0)
        } else {
            childArguments += ["--allow-plain-tcp"]
            endpoint = .tcp(host: "127.0.0.1", port: 0)
        }
        let listener = try await PeerListener.listen(
            on: endpoint, configuration: configuration, access: AccessPolicy(allowsUnauthenticated: !tls))
        childArguments += ["--connect", listener.endpoint.description]
        let server = Task {
            _ = try await Subprocess.run(
                .path(FilePath(executable)), arguments: Arguments(childArguments),
                output: .currentStandardOutput, error: .currentStandardError)
        }
        var peers = listener.peers.makeAsyncIterator()
        guard let peer = await peers.next() else { throw IntercomError(.closed, "the benchmark listener closed") }
        return BenchChild(peer: peer, worker: nil, server: server, busDirectory: nil, listener: listener)
    }

    func stop() async {
        await self.peer.close()
        await self.listener?.close()
        if let worker { _ = await worker.stop() }
        _ = try? await self.server?.value
        if let busDirectory { rmdir(busDirectory) }
    }
}
