import ArgumentParser
import Dispatch
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Intercom
import Synchronization

#if canImport(Glibc)
import Glibc
@_spi(IntercomInternals) internal import IntercomTransport
#endif

// MARK: What flows between the demo's processes

/// A synthetic camera frame: a small grey image whose brightness follows the exposure.
struct DemoFrame: Codable, Sendable {
    var index: Int
    var exposureMs: Double
    var width: Int
    var height: Int
    var pixels: [UInt8]
}

struct DemoExposure: Codable, Sendable { var ms: Double }
struct DemoExposureAck: Codable, Sendable { var appliedMs: Double }

/// What the camera reports to the coordinator twice a second.
struct DemoCameraStats: Codable, Sendable {
    var frames: Int
    var exposureMs: Double
    var exposureCalls: Int
}

/// What the processor reports to the coordinator twice a second.
struct DemoProcessorStats: Codable, Sendable {
    var frames: Int
    var missed: Int
    var calls: Int
    var latencyP50Us: Double
    var latencyP99Us: Double
    var brightness: Double
}

// MARK: The coordinator

/// `intercom demo`: a camera, a processor and a coordinator on the default bus.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A multi-process demo on the bus: a camera publishes frames, a processor analyses them and steers the exposure.")

    @OptionGroup var busOptions: BusOptions
    @Option(help: "Seconds to run, 2 to 86400 (the processor is killed halfway).") var duration: Int = 20
    @Flag(help: "Run until Ctrl-C (the processor is still killed once, after 10 s).") var forever = false

    func validate() throws {
        try requireCount(self.duration, option: "--duration", in: 2...86_400)
    }

    func run() async throws {
        try await reportingErrors {
            try await DemoCoordinator(bus: try self.busOptions.resolve(), duration: self.forever ? nil : max(2, self.duration)).run()
        }
    }
}

/// The statistics the coordinator shows, fed by the workers' reports.
final class DemoBoard: Sendable {
    struct State {
        var camera = DemoCameraStats(frames: 0, exposureMs: 0, exposureCalls: 0)
        var processor = DemoProcessorStats(frames: 0, missed: 0, calls: 0, latencyP50Us: 0, latencyP99Us: 0, brightness: 0)
        var processorFramesBefore = 0  // frames counted by incarnations that died
        var processorCallsBefore = 0
        var lastProcessorFrames = 0
    }
    let state = Locked(State())
}

struct DemoCoordinator {
    let bus: Bus
    let duration: Int?

    func run() async throws {
        for name in ["camera", "processor"] where try self.bus.service(named: name) != nil {
            throw IntercomError(.nameInUse, "a '\(name)' service is already running on bus \(self.bus.directory); stop it first")
        }
        let board = DemoBoard()
        let router = Router()
        try router.register("demo.camera.stats") { (stats: DemoCameraStats, _: CallContext) -> Bool in
            board.state.withLock { $0.camera = stats }
            return true
        }
        try router.register("demo.processor.stats") { (stats: DemoProcessorStats, _: CallContext) -> Bool in
            board.state.withLock { state in
                if stats.frames < state.lastProcessorFrames {
                    // A new incarnation counts from zero: keep what the old one did.
                    state.processorFramesBefore += state.processor.frames
                    state.processorCallsBefore += state.processor.calls
                }
                state.lastProcessorFrames = stats.frames
                state.processor = stats
            }
            return true
        }
        say("intercom demo — bus \(self.bus.directory)")
        say("coordinator pid \(getpid()) starts a camera and a processor worker (restart policy: on failure)\n")

        let supervisor = Supervisor()
        let policy = RestartPolicy.onFailure(maxRestarts: 5, window: .seconds(60), backoff: .milliseconds(50))
        for role in ["camera", "processor"] {
            let spec = WorkerSpec.currentExecutable(
                role: role, arguments: ["demo-worker", "--role", role, "--bus-directory", self.bus.directory])
            supervisor.start(role, spec, policy: policy, router: router)
        }
        // The supervisor's run owns the workers: it ends after stopAll, once both are reaped.
        async let supervising: Void = supervisor.run()
        let killedAt = Locked<ContinuousClock.Instant?>(nil)
        let pids = Locked<[String: [Int32]]>([:])
        let watcher = Task {
            for await event in supervisor.events {
                switch event {
                case .started(let name, let pid):
                    pids.withLock { $0[name, default: []].append(pid) }
                    say("  ▶ \(name) started (pid \(pid))")
                case .exited(let name, let pid, let status):
                    if let killed = killedAt.withLock({ $0 }), name == "processor", status == .signaled(SIGKILL) {
                        let ms = (ContinuousClock.now - killed).milliseconds
                        say("  ✖ \(name) (pid \(pid)) died: \(status) — detected in \(fixed(ms, 1)) ms")
                    } else {
                        say("  ■ \(name) (pid \(pid)) \(status)")
                    }
                case .restarting(let name, let attempt, let delay):
                    say("  ↻ restarting \(name) (restart #\(attempt), after \(delay.milliseconds) ms)")
                case .failed(let name, let reason):
                    say("  ✖ \(name) failed for good: \(reason)")
                case .stopped:
                    break
                }
            }
        }
        _ = try await self.bus.waitForService("camera", timeout: .seconds(30))
        _ = try await self.bus.waitForService("processor", timeout: .seconds(30))

        // Ctrl-C (or SIGTERM) ends the demo the same clean way as the end of its time.
        let interrupted = Atomic<Bool>(false)
        var signalSources: [any DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { interrupted.store(true, ordering: .relaxed) }
            source.resume()
            signalSources.append(source)
        }
        defer { for source in signalSources { source.cancel() } }
        let start = ContinuousClock.now
        let killTime = self.duration.map { $0 / 2 } ?? 10
        var second = 0
        var lastCameraFrames = 0
        var lastCalls = 0
        while !interrupted.load(ordering: .relaxed), self.duration.map({ second < $0 }) ?? true {
            second += 1
            try? await Task.sleep(until: start + .seconds(second))
            let (camera, processor, framesBefore, callsBefore) = board.state.withLock {
                ($0.camera, $0.processor, $0.processorFramesBefore, $0.processorCallsBefore)
            }
            let calls = callsBefore + processor.calls
            let restarts = supervisor.restartCount(of: "processor") + supervisor.restartCount(of: "camera")
            let cameraPart =
                "camera: \(right(camera.frames, 5)) frames (\(right(camera.frames - lastCameraFrames, 3))/s), "
                + "exposure \(right(fixed(camera.exposureMs, 2), 5)) ms"
            let processorPart =
                "processor: \(right(framesBefore + processor.frames, 5)) frames, \(right(calls - lastCalls, 3)) calls/s, "
                + "p50 \(right(fixed(processor.latencyP50Us, 1), 6)) µs, p99 \(right(fixed(processor.latencyP99Us, 1), 7)) µs, "
                + "brightness \(right(fixed(processor.brightness, 1), 5)), missed \(processor.missed)"
            say("[\(right(second, 3))s] \(cameraPart) │ \(processorPart) │ restarts \(restarts)")
            lastCameraFrames = camera.frames
            lastCalls = calls
            if second == killTime, let processor = supervisor.worker(named: "processor") {
                say("  ⚡ killing the processor (pid \(processor.pid)) with SIGKILL")
                killedAt.withLock { $0 = .now }
                processor.send(.kill)
            }
        }

        say("\nbroadcasting quit to every service on the bus …")
        let report = try await self.bus.broadcast("intercom.quit", 0, returning: Bool.self)
        say("  quit acknowledged by: \(report.received.joined(separator: ", "))")
        for (name, error) in report.failures.sorted(by: { $0.key < $1.key }) { say("  \(name): \(error.code)") }
        await supervisor.stopAll(grace: .seconds(3))
        await supervising
        await watcher.value
        let all = pids.withLock { $0.values.flatMap { $0 } }.sorted()
        let alive = all.filter { kill($0, 0) == 0 }
        say("children: \(all.map(String.init).joined(separator: ", ")) — \(alive.isEmpty ? "all reaped" : "STILL ALIVE: \(alive)")")
        if !alive.isEmpty { throw ExitCode.failure }
    }
}

func say(_ line: String) {
    printLine(line)
}

extension Duration {
    var milliseconds: Double {
        Double(self.components.seconds) * 1000 + Double(self.components.attoseconds) / 1e15
    }
}

// MARK: The workers

/// `intercom demo-worker --role camera|processor`: started by `intercom demo`.
struct DemoWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-worker", abstract: "A worker of `intercom demo` (not for direct use).", shouldDisplay: false)

    @Option var role: String
    @Option var busDirectory: String

    func run() async throws {
        let bus = Bus(directory: self.busDirectory)
        let parent = try await Peer.parent(configuration: Peer.Configuration(name: self.role))
        switch self.role {
        case "camera": try await runCamera(bus: bus, parent: parent)
        case "processor": try await runProcessor(bus: bus, parent: parent)
        default: throw ValidationError("unknown role \(self.role)")
        }
        await parent.close()
    }
}

/// Publishes a 64×48 frame every 20 ms; `camera.exposure.set` changes how bright it is.
func runCamera(bus: Bus, parent: Peer) async throws {
    let exposure = Locked<Double>(4)
    let exposureCalls = Atomic<Int>(0)
    let router = Router()
    try router.register("camera.exposure.set") { (request: DemoExposure, _: CallContext) -> DemoExposureAck in
        let applied = min(max(request.ms, 0.1), 50)
        exposure.withLock { $0 = applied }
        exposureCalls.add(1, ordering: .relaxed)
        return DemoExposureAck(appliedMs: applied)
    }
    let service = try await bus.serve("camera", router: router)
    let publisher = Task {
        var index = 0
        let start = ContinuousClock.now
        while !Task.isCancelled {
            index += 1
            try? await Task.sleep(until: start + .milliseconds(20 * index))
            let ms = exposure.withLock { $0 }
            // A scene of gentle gradients; brightness grows with the exposure.
            let gain = ms * 10
            var pixels = [UInt8](repeating: 0, count: 64 * 48)
            for y in 0..<48 {
                for x in 0..<64 {
                    pixels[y * 64 + x] = UInt8(clamping: Int(Double((x + y + index) % 32) * gain / 16))
                }
            }
            _ = try? service.publish("frames.ready", DemoFrame(index: index, exposureMs: ms, width: 64, height: 48, pixels: pixels))
            if index % 25 == 0 {
                try? await parent.send(
                    "demo.camera.stats",
                    DemoCameraStats(frames: index, exposureMs: ms, exposureCalls: exposureCalls.load(ordering: .relaxed)))
            }
        }
    }
    await service.waitForQuit()
    publisher.cancel()
    await service.close()
}

/// Analyses every frame and, every fifth frame, steers the camera's exposure
/// toward a mean brightness of 100 with a call.
func runProcessor(bus: Bus, parent: Peer) async throws {
    let service = try await bus.serve("processor")
    let camera = bus.makeHandle(to: "camera")
    let work = Task {
        do {
            let frames = try await camera.peer(timeout: .seconds(10)).events("frames.ready", as: DemoFrame.self, bufferSize: 64)
            var count = 0
            var missed = 0
            var calls = 0
            var latencies: [Double] = []
            var brightness = 0.0
            for try await delivery in frames {
                switch delivery {
                case .lagged(let n):
                    missed += n
                case .event(let frame):
                    count += 1
                    brightness = Double(frame.pixels.reduce(0) { $0 + Int($1) }) / Double(frame.pixels.count)
                    if count % 5 == 0 {
                        let target = frame.exposureMs * (100 / max(brightness, 1))
                        let t0 = ContinuousClock.now
                        _ = try await camera.call(
                            "camera.exposure.set", DemoExposure(ms: (frame.exposureMs + target) / 2), returning: DemoExposureAck.self,
                            timeout: .seconds(1))
                        latencies.append((ContinuousClock.now - t0).milliseconds * 1000)
                        calls += 1
                    }
                    if count % 25 == 0 {
                        let sorted = latencies.suffix(200).sorted()
                        let p50 = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
                        let p99 = sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
                        try await parent.send(
                            "demo.processor.stats",
                            DemoProcessorStats(
                                frames: count, missed: missed, calls: calls, latencyP50Us: p50, latencyP99Us: p99,
                                brightness: brightness))
                    }
                }
            }
        } catch {
            // The camera went away or the demo is ending.
        }
    }
    await service.waitForQuit()
    work.cancel()
    await camera.close()
    await service.close()
}
