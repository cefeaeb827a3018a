// This module imports the calculator's protocol (IntercomActorExample) and
// Intercom — never the implementation, which lives in the helper process.
import Distributed
import Foundation
import Intercom
import IntercomActorExample
import IntercomTestSupport
import IntercomTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The helper executable, built next to this test bundle.
private var helperPath: String {
    var directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("IntercomTestHelper").path),
        directory.path != "/"
    {
        directory = directory.deletingLastPathComponent()
    }
    return directory.appendingPathComponent("IntercomTestHelper").path
}

/// A helper process hosting the calculator on a private bus, and a client system for it.
private final class CalculatorHost: Sendable {
    let directory: String
    let bus: Bus
    let process: Process
    let exited: AsyncStream<Int32>

    /// - Parameter tls: also serve on a loopback TLS port, with a certificate of
    ///   the test run's authority (the files live in the bus directory).
    init(tls: Bool = false) throws {
        self.directory = "/tmp/ica-\(getpid())-\(UUID().uuidString.prefix(8))"
        mkdir(self.directory, 0o700)
        self.bus = Bus(directory: self.directory)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: helperPath)
        process.arguments = ["--actors", "calc", "--bus", self.directory]
        if tls {
            let certificates = "\(self.directory)/certificates"
            mkdir(certificates, 0o700)
            let files = try TestCertificateAuthority.shared.writeFiles(commonName: "calc-host", into: certificates)
            process.arguments! += [
                "--listen", "tls://127.0.0.1:0", "--tls-cert", files.certificate, "--tls-key", files.key, "--tls-ca", files.ca,
            ]
        }
        process.standardInput = FileHandle.nullDevice
        let (exited, continuation) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { continuation.yield($0.terminationStatus); continuation.finish() }
        try process.run()
        self.process = process
        self.exited = exited
    }

    func waitForExit() async -> Int32 {
        for await status in self.exited { return status }
        return self.process.terminationStatus
    }

    /// If a test ended early: the host must not outlive it.
    func kill() {
        if self.process.isRunning { Glibc.kill(self.process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: self.directory)
    }

    func finish() async {
        if self.process.isRunning, let peer = try? await self.bus.connect(to: "calc") {
            _ = try? await peer.call("intercom.quit", 0, returning: Bool.self)
            await peer.close()
        }
        _ = await self.waitForExit()
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

@Suite(.serialized) struct ActorTests {
    @Test func aResolvableProtocolReachesTheImplementationInAnotherProcess() async throws {
        try await withResourceCheck {
            let host = try CalculatorHost()
            defer { host.kill() }
            _ = try await host.bus.waitForService("calc", timeout: .seconds(30))
            let system = IntercomActorSystem(bus: host.bus)
            let calculator = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "calculator"), using: system)

            #expect(try await calculator.add(40, 2) == 42)
            // Generic distributed functions.
            let echoer = try Echoer.resolve(id: IntercomActorID(endpoint: "calc", name: "echoer"), using: system)
            #expect(try await echoer.echo("text") == "text")
            #expect(try await echoer.echo([1, 2, 3]) == [1, 2, 3])
            #expect(try await echoer.echo(CalculatorError.divisionByZero(dividend: 7)) == .divisionByZero(dividend: 7))
            #expect(try await echoer.swap(1, "b") == ["b", "1"])
            // A Codable error comes back as itself; another arrives as a remote error with its type name.
            await #expect(throws: CalculatorError.divisionByZero(dividend: 1)) { try await calculator.divide(1, by: 0) }
            do {
                try await calculator.failPlainly()
                Issue.record("expected an error")
            } catch let error as IntercomError {
                #expect(error.code == .remote)
                #expect(error.remoteType?.hasSuffix("PlainError") == true, "\(error)")
                #expect(error.message.contains("not codable"))
            }
            #expect(system.remoteCallCount == 7)
            await system.close()
            await host.finish()
        }
    }

    /// The bus service of the host process also listens on a TLS address; a
    /// client that knows only that address (as one on another host would)
    /// resolves the actor there, both sides verified by certificate.
    @Test func anActorIsCalledAcrossTLSAtItsServiceAddress() async throws {
        try await withResourceCheck {
            let host = try CalculatorHost(tls: true)
            defer { host.kill() }
            let info = try await host.bus.waitForService("calc", timeout: .seconds(30))
            let address = try #require(info.addresses?.first)
            #expect(address.hasPrefix("tls://127.0.0.1:") && !address.hasSuffix(":0"), "\(address)")
            var configuration = Peer.Configuration(name: "remote-client")
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "remote-client")
            let system = IntercomActorSystem(configuration: configuration)
            let calculator = try $Calculator.resolve(id: IntercomActorID(endpoint: address, name: "calculator"), using: system)
            #expect(try await calculator.add(40, 2) == 42)
            await #expect(throws: CalculatorError.divisionByZero(dividend: 1)) { try await calculator.divide(1, by: 0) }
            #expect(system.remoteCallCount == 2)
            // Without a certificate of the trusted authority the same address refuses.
            var stranger = Peer.Configuration(name: "stranger")
            stranger.tls = try TestCertificateAuthority(name: "Other CA").options(commonName: "stranger", trusting: TestCertificateAuthority.shared)
            let refused = IntercomActorSystem(configuration: stranger)
            let unreachable = try $Calculator.resolve(id: IntercomActorID(endpoint: address, name: "calculator"), using: refused)
            do {
                _ = try await unreachable.add(1, 1)
                Issue.record("expected the stranger to be refused")
            } catch let error as IntercomError {
                #expect(error.code == .authenticationFailed, "\(error)")
            }
            await refused.close()
            await system.close()
            await host.finish()
        }
    }

    @Test func cancellationAndDeadlinesCrossTheProcessBoundary() async throws {
        try await withResourceCheck {
            let host = try CalculatorHost()
            defer { host.kill() }
            _ = try await host.bus.waitForService("calc", timeout: .seconds(30))
            let system = IntercomActorSystem(bus: host.bus, callTimeout: .milliseconds(300))
            let calculator = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "calculator"), using: system)
            // Deadline: the call times out, and the remote function is cancelled.
            do {
                _ = try await calculator.wait(milliseconds: 60_000)
                Issue.record("expected a timeout")
            } catch let error as IntercomError {
                #expect(error.code == .timeout, "\(error)")
            }
            // Cancelling the calling task cancels the remote function.
            let patient = IntercomActorSystem(bus: host.bus, callTimeout: .seconds(60))
            let sameCalculator = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "calculator"), using: patient)
            let task = Task { try await sameCalculator.wait(milliseconds: 60_000) }
            // Cancel once the remote function is running (read through a plain call).
            let peer = try await host.bus.connect(to: "calc")
            // (The timed-out call's cancellation counts once it is observed: wait for both.)
            _ = try await peer.call("actors.waits", [1, 1], returning: [Int].self, timeout: .seconds(10))
            task.cancel()
            await #expect(throws: (any Error).self) { _ = try await task.value }
            // Both remote functions observed their cancellation.
            let waits = try await peer.call("actors.waits", [0, 2], returning: [Int].self, timeout: .seconds(10))
            #expect(waits == [0, 2], "in progress, cancelled: \(waits)")
            await peer.close()
            await system.close()
            await patient.close()
            await host.finish()
        }
    }

    @Test func aDeadHostFailsCallsWithPeerLostAndMissingActorsAreNamed() async throws {
        try await withResourceCheck {
            let host = try CalculatorHost()
            defer { host.kill() }
            _ = try await host.bus.waitForService("calc", timeout: .seconds(30))
            let system = IntercomActorSystem(bus: host.bus, callTimeout: .seconds(60))
            // Resolving something that does not exist fails at the first call, clearly.
            let nobody = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "nobody"), using: system)
            do {
                _ = try await nobody.add(1, 1)
                Issue.record("expected actorNotFound")
            } catch let error as IntercomError {
                #expect(error.code == .actorNotFound)
                #expect(error.message.contains("'nobody'"))
            }
            // An actor deinitialised on the service side is gone for later callers.
            let temporary = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "temporary"), using: system)
            #expect(try await temporary.add(1, 1) == 2)
            let control = try await host.bus.connect(to: "calc")
            #expect(try await control.call("actors.drop.temporary", 0, returning: Bool.self))
            do {
                _ = try await temporary.add(1, 1)
                Issue.record("expected actorNotFound")
            } catch let error as IntercomError {
                #expect(error.code == .actorNotFound, "\(error)")
            }
            await control.close()
            // The host dies during a call: the call fails with peerLost, it does not hang.
            let calculator = try $Calculator.resolve(id: IntercomActorID(endpoint: "calc", name: "calculator"), using: system)
            let pending = Task { try await calculator.wait(milliseconds: 60_000) }
            let observer = try await host.bus.connect(to: "calc")
            _ = try await observer.call("actors.waits", [1, 0], returning: [Int].self, timeout: .seconds(10))
            kill(host.process.processIdentifier, SIGKILL)
            do {
                _ = try await pending.value
                Issue.record("expected peerLost")
            } catch let error as IntercomError {
                #expect(error.code == .peerLost, "\(error)")
            }
            await observer.close()
            await system.close()
            await host.finish()
        }
    }

    /// Over a socket pair to a spawned worker (the example in Examples/ActorsExample).
    @Test func theExampleCallsAWorkersActorOverASocketPair() async throws {
        try await withResourceCheck {
            let path = URL(fileURLWithPath: helperPath).deletingLastPathComponent().appendingPathComponent("actors-example").path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: path)
            let output = Pipe()
            process.standardOutput = output
            process.standardInput = FileHandle.nullDevice
            let (exited, continuation) = AsyncStream.makeStream(of: Int32.self)
            process.terminationHandler = { continuation.yield($0.terminationStatus); continuation.finish() }
            try process.run()
            // Read on a thread of its own: a blocking read on the concurrency pool stalls every other test.
            let text = await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    continuation.resume(returning: String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
                }
            }
            var status: Int32 = -1
            for await code in exited { status = code }
            try? output.fileHandleForReading.close()
            #expect(status == 0, "\(text)")
            #expect(text.contains("add(40, 2)        = 42"))
            #expect(text.contains("divide(84, by: 2) = 42"))
            #expect(text.contains("threw divisionByZero(dividend: 1)"))
            #expect(text.contains("worker exited(0)"))
        }
    }

    @Test func anActorInTheSameProcessIsCalledDirectly() async throws {
        let system = IntercomActorSystem(endpoint: "local")
        let local = LocalCounter(actorSystem: system)
        system.publish(local, as: "counter")
        let resolved = try LocalCounter.resolve(id: system.id(forPublished: "counter"), using: system)
        #expect(try await resolved.increment() == 1)
        #expect(try await resolved.increment() == 2)
        #expect(system.remoteCallCount == 0, "no serialisation, no connection")
        #expect(resolved === local)
    }
}

distributed actor LocalCounter {
    typealias ActorSystem = IntercomActorSystem
    var count = 0
    distributed func increment() -> Int {
        self.count += 1
        return self.count
    }
}
