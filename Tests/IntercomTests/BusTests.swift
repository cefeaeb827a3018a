import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The bus with real service processes: claiming names, finding services,
/// leftovers of dead services, events, and the security checks.
@Suite(.serialized) struct BusTests {
    @Test func aServiceIsFoundListedCalledAndQuits() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                // Waiting starts before the service exists and returns once it is ready.
                async let found = bus.waitForService("camera", timeout: .seconds(20))
                let service = try ServiceProcess(name: "camera", bus: temporary)
                let info = try await found
                #expect(info.pid == service.pid)
                #expect(info.methods.contains("camera.exposure.set"))
                #expect(info.methods.contains("intercom.quit"))
                #expect(try bus.services().map(\.name) == ["camera"])
                #expect(Set(temporary.files) == ["camera.json", "camera.lock", "camera.sock"])
                for file in ["camera.json", "camera.lock", "camera.sock"] {
                    var info = stat()
                    #expect(lstat(temporary.directory + "/" + file, &info) == 0)
                    #expect(info.st_mode & 0o777 == 0o600, "\(file) is private")
                }

                let camera = try await bus.connect(to: "camera")
                let ack = try await camera.call(
                    "camera.exposure.set", SetExposure(ms: 10), returning: Ack.self)
                #expect(ack == Ack(ok: true, appliedMs: 10))
                #expect(try await camera.call("intercom.info", 0, returning: ServiceInfo.self) == info)
                #expect(try await camera.call("intercom.quit", 0, returning: Bool.self))
                await camera.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
                #expect(try bus.services().isEmpty)
            }
        }
    }

    /// A claimant waiting to replace a holder that does not let go waits quietly:
    /// probing the held lock used to wake its own directory watcher (the probe's
    /// close was an IN_CLOSE_WRITE), so it spun a CPU until its replace timeout.
    /// (The holder is stopped and its socket removed, so the claimant's request
    /// to quit fails at once and the wait on the lock begins.)
    @Test func waitingToReplaceAStuckHolderCostsNoCPU() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let holder = try ServiceProcess(name: "stuck", bus: temporary)
                _ = try await temporary.bus.waitForService("stuck", timeout: .seconds(20))
                holder.kill(SIGSTOP)
                unlink(temporary.directory + "/stuck.sock")
                let report = NSTemporaryDirectory() + "intercom-claim-cpu-\(getpid())"
                defer { unlink(report) }
                let claimant = try ServiceProcess(
                    name: "stuck", bus: temporary,
                    arguments: ["--replace", "--replace-timeout-ms", "3000", "--cpu-report", report])
                #expect(await claimant.waitForExit() == 3, "it gave up after 3 s: the holder never let go")
                // Its whole life: start-up plus 3 s of waiting. Spinning, it was over 3 CPU-s.
                let used = Double(try String(contentsOfFile: report, encoding: .utf8)) ?? .infinity
                #expect(used < 1.0, "the claimant used \(used) CPU-s for a 3 s wait")
                holder.kill(SIGKILL)
                _ = await holder.waitForExit()
                // What the killed holder left (this test removed its socket itself).
                for file in ["stuck.json", "stuck.lock"] { unlink(temporary.directory + "/" + file) }
            }
        }
    }

    /// Both ends know who is on the other side from the kernel, over the socket and
    /// after the connection moved to shared memory; a socket pair has no such
    /// knowledge (the kernel reports the pair's creator on both ends).
    @Test(arguments: [false, true]) func bothEndsSeeTheKernelsCredentialsOfTheOther(sharedMemory: Bool) async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "who", bus: temporary)
                var configuration = Peer.Configuration()
                configuration.sharedMemory.isEnabled = sharedMemory
                let peer = try await temporary.bus.connect(to: "who", timeout: .seconds(20), configuration: configuration)
                #expect(peer.medium == (sharedMemory ? .sharedMemory : .socket))
                #expect(peer.remote.credentials?.pid == service.pid)
                #expect(peer.remote.credentials?.uid == getuid())
                #expect(peer.remote.reportedPID == service.pid)
                #expect(try await peer.call("peer.caller", 0, returning: [Int].self) == [Int(getpid()), Int(getuid())])

                let worker = try await Worker.spawn(helperSpec())
                #expect(worker.peer.remote.credentials == nil, "a socket pair's credentials are its creator's")
                #expect(try await worker.peer.call("peer.caller", 0, returning: [Int].self) == [])
                await worker.stop()
                #expect(try await peer.call("intercom.quit", 0, returning: Bool.self))
                await peer.waitUntilClosed()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// A service keeps its bus directory open while it serves; once `close()`
    /// returns the descriptor is closed, however long something else still holds
    /// the service (a task finishing a quit did, and a resource audit right after
    /// a broadcast-quit saw the directory still open).
    @Test func aClosedServiceHoldsNoDescriptorOfItsBusDirectory() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                func directoryDescriptors() -> [String] {
                    ResourceAudit.openDescriptors().values.filter { $0.hasPrefix(temporary.directory) }
                }
                let service = try await temporary.bus.serve("kept")
                #expect(!directoryDescriptors().isEmpty, "serving holds the directory open")
                await service.close()
                #expect(directoryDescriptors().isEmpty, "still open after close(): \(directoryDescriptors())")
                withExtendedLifetime(service) {}
            }
        }
    }

    @Test func connectingToAMissingServiceSaysWhatIsRunning() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try await temporary.bus.serve("present")
                await expectIntercomError(.serviceNotFound) {
                    _ = try await temporary.bus.connect(to: "absent")
                }
                do {
                    _ = try await temporary.bus.connect(to: "absent")
                } catch let error as IntercomError {
                    #expect(error.message.contains("running: present"), "\(error)")
                }
                await expectIntercomError(.timeout) {
                    _ = try await temporary.bus.waitForService("absent", timeout: .milliseconds(200))
                }
                await service.close()
            }
        }
    }

    @Test func aSecondClaimantGetsNameInUseUnlessItReplaces() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let first = try ServiceProcess(name: "camera", bus: temporary)
                _ = try await bus.waitForService("camera", timeout: .seconds(20))
                let error = await expectIntercomError(.nameInUse) { _ = try await bus.serve("camera") }
                #expect(error?.message.contains("pid \(first.pid)") == true, "\(String(describing: error))")
                // Also within one process: the lock is per open file, not per process.
                let other = try await bus.serve("other")
                await expectIntercomError(.nameInUse) { _ = try await bus.serve("other") }
                await other.close()

                let replacement = try await bus.serve("camera", replace: true)
                #expect(await first.waitForExit() == 0, "the old service was asked to quit")
                #expect(try bus.service(named: "camera")?.pid == getpid())
                await replacement.close()
            }
        }
    }

    @Test func twoProcessesRacingForANameOneWinsEveryTime() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                for round in 0..<20 {
                    let name = "race\(round)"
                    let a = try ServiceProcess(name: name, bus: temporary)
                    let b = try ServiceProcess(name: name, bus: temporary)
                    let info = try await temporary.bus.waitForService(name, timeout: .seconds(20))
                    let (winner, loser) = info.pid == a.pid ? (a, b) : (b, a)
                    #expect(info.pid == winner.pid)
                    #expect(
                        await loser.waitForExit() != 0, "round \(round): the loser must fail with nameInUse")
                    let peer = try await temporary.bus.connect(to: name)
                    _ = try? await peer.call("intercom.quit", 0, returning: Bool.self)
                    await peer.close()
                    #expect(await winner.waitForExit() == 0)
                }
            }
        }
    }

    @Test func leftoversOfKilledServicesAreCleanedOnTheNextLookup() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                var services: [ServiceProcess] = []
                for index in 0..<50 {
                    services.append(try ServiceProcess(name: "victim\(index)", bus: temporary))
                }
                for index in 0..<50 {
                    _ = try await temporary.bus.waitForService("victim\(index)", timeout: .seconds(30))
                }
                #expect(try temporary.bus.services().count == 50)
                for service in services { service.kill(SIGKILL) }
                for service in services { await service.waitForExit() }
                #expect(temporary.files.count == 150, "the dead left their files: \(temporary.files.count)")
                let listed = try await runCLI(["list"], busDirectory: temporary.directory)
                #expect(listed.status == 0)
                #expect(listed.output.contains("no services"), "intercom list shows none of them: \(listed.output)")
                #expect(try temporary.bus.services().isEmpty)
                #expect(temporary.files.isEmpty, "cleaned up: \(temporary.files)")
            }
        }
    }

    @Test func killingAServiceTellsCallersAndSubscribersAndARestartIsReachable() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let bus = temporary.bus
                let first = try ServiceProcess(name: "camera", bus: temporary)
                let camera = try await bus.connect(to: "camera", timeout: .seconds(20))
                let frames = camera.events("frames", as: Int.self)
                let pending = Task {
                    try await camera.call("hang", 0, returning: Int.self, timeout: .seconds(60))
                }
                _ = try await camera.receiveMessage(timeout: .seconds(10))  // "hang.started"
                first.kill(SIGKILL)
                await expectIntercomError(.peerLost) { _ = try await pending.value }
                await expectIntercomError(.peerLost) { for try await _ in frames {} }
                await first.waitForExit()

                let second = try ServiceProcess(name: "camera", bus: temporary)
                let again = try await bus.connect(to: "camera", timeout: .seconds(20))
                #expect(again.remote.reportedPID == second.pid)
                #expect(try await again.call("math.add", AddRequest(a: 2, b: 2), returning: Int.self) == 4)
                _ = try? await again.call("intercom.quit", 0, returning: Bool.self)
                await again.close()
                #expect(await second.waitForExit() == 0)
            }
        }
    }

    /// A service's first handler already finds its caller among the service's
    /// clients: an event published to a subscription made before the call reaches
    /// it. (Over shared memory the connection used to serve its first frames
    /// before the listener listed it; such a publish skipped the subscriber.)
    @Test func theFirstCallOfANewClientSeesItsSubscriptions() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "ticker", bus: temporary)
                for _ in 0..<40 {
                    let peer = try await temporary.bus.connect(to: "ticker", timeout: .seconds(20))
                    let ticks = peer.events("ticks", as: Int.self)
                    let tally = try await peer.call("events.burst", Burst(topic: "ticks", count: 1), returning: BurstTally.self)
                    #expect(tally == BurstTally(sent: 1, dropped: 0))
                    if tally.sent == 1 {
                        var iterator = ticks.makeAsyncIterator()
                        #expect(try await iterator.next() == .event(0))
                    }
                    await peer.close()
                }
                let last = try await temporary.bus.connect(to: "ticker", timeout: .seconds(20))
                _ = try? await last.call("intercom.quit", 0, returning: Bool.self)
                await last.close()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    /// A subscriber that does not read while 100,000 events are published: the
    /// publisher never waits, the subscriber's queue stays at its cap, and every
    /// event is accounted for — received, or reported as missed.
    @Test func aSlowSubscriberLosesEventsByItsPolicyAndTheCountsAddUp() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let service = try ServiceProcess(name: "ticker", bus: temporary)
                let peer = try await temporary.bus.connect(to: "ticker", timeout: .seconds(20))
                let ticks = peer.events("ticks", as: Int.self, bufferSize: 1000, overflow: .dropOldest)
                let total = 100_000
                let tally = try await peer.call(
                    "events.burst", Burst(topic: "ticks", count: total), returning: BurstTally.self,
                    timeout: .seconds(120))
                #expect(tally.sent + tally.dropped == total)
                #expect(ticks.counts.queued <= 1000, "the queue stays at its cap")

                // Counted in a task a timer cancels after 60 s: a lost event or lag
                // notice must fail this test with the counts, not hang the suite.
                let counting = Task { () throws -> (received: [Int], missed: Int) in
                    var received: [Int] = []
                    var missed = 0
                    for try await delivery in ticks {
                        switch delivery {
                        case .event(let value): received.append(value)
                        case .lagged(let count): missed += count
                        }
                        // `>=`: an over-count must fail the expectation below, not hang here.
                        if received.count + missed >= total { break }
                    }
                    return (received, missed)
                }
                let watchdog = DispatchWorkItem { counting.cancel() }
                DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: watchdog)
                let counted = await counting.result
                watchdog.cancel()
                guard case .success(let (received, missed)) = counted else {
                    Issue.record(
                        "the deliveries stalled: publisher sent \(tally.sent), dropped \(tally.dropped); subscription counts \(ticks.counts)")
                    _ = try? await peer.call("intercom.quit", 0, returning: Bool.self)
                    await peer.close()
                    _ = await service.waitForExit()
                    return
                }
                #expect(received.count + missed == total, "sent = received + dropped")
                #expect(received.count <= 1000)
                #expect(missed >= total - 1000)
                #expect(received == received.sorted(), "events arrive in order")
                #expect(received.last == total - 1, "drop-oldest keeps the newest")

                // The other policy: the subscription ends with `busy` when it overflows.
                let strict = peer.events("strict", as: Int.self, bufferSize: 10, overflow: .disconnect)
                _ = try await peer.call(
                    "events.burst", Burst(topic: "strict", count: 100), returning: BurstTally.self)
                var delivered = 0
                let error = await expectIntercomError(.busy) {
                    for try await _ in strict { delivered += 1 }
                }
                #expect(delivered == 10, "what was queued before the overflow is delivered: \(delivered)")
                #expect(error?.message.contains("strict") == true)

                _ = try? await peer.call("intercom.quit", 0, returning: Bool.self)
                await peer.close()
                #expect(await service.waitForExit() == 0)
            }
        }
    }

    @Test func unsafeDirectoriesAndPlantedFilesAreRefused() async throws {
        try await withResourceCheck {
            try await withTemporaryBus(expectEmpty: false) { temporary in
                // Open to others: refused (checked with lstat).
                chmod(temporary.directory, 0o755)
                await expectIntercomError(.permissionDenied) { _ = try await temporary.bus.serve("camera") }
                #expect(throws: IntercomError.self) { try temporary.bus.services() }
                chmod(temporary.directory, 0o700)

                // A symlink in place of the bus directory: refused, not followed.
                let link = temporary.directory + "-link"
                symlink(temporary.directory, link)
                defer { unlink(link) }
                await expectIntercomError(.permissionDenied) {
                    _ = try await Bus(directory: link).serve("camera")
                }

                // Planted symlinks where a service's files go: refused, never followed or deleted.
                let target = temporary.directory + "/target"
                #expect(FileManager.default.createFile(atPath: target, contents: Data("keep".utf8)))
                symlink(target, temporary.directory + "/evil.sock")
                await expectIntercomError(.permissionDenied) { _ = try await temporary.bus.serve("evil") }
                #expect(FileManager.default.fileExists(atPath: temporary.directory + "/evil.sock"))
                symlink(target, temporary.directory + "/trap.lock")
                await expectIntercomError(.permissionDenied) { _ = try await temporary.bus.serve("trap") }
                #expect((try? String(contentsOfFile: target, encoding: .utf8)) == "keep")

                // A socket path over the platform limit: a clear error, not truncation.
                await expectIntercomError(.invalidName) {
                    _ = try await temporary.bus.serve(String(repeating: "x", count: 120))
                }
            }
        }
    }

    @Test func aClientOfAnotherUserIsRefusedBeforeAnyHandlerRuns() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let ran = Atomic<Int>(0)
                let router = Router()
                try router.register("touch") { (_: Int, _: CallContext) -> Int in
                    ran.add(1, ordering: .relaxed)
                    return 1
                }
                // The credential check is forced to fail: only a uid that is not ours may connect.
                let service = try await temporary.bus.serve(
                    "guarded", router: router, access: .users([getuid() &+ 1]))
                let error = await expectIntercomError(.permissionDenied) {
                    let peer = try await temporary.bus.connect(to: "guarded")
                    _ = try await peer.call("touch", 0, returning: Int.self)
                }
                #expect(error?.message.contains("uid \(getuid())") == true, "\(String(describing: error))")
                #expect(ran.load(ordering: .relaxed) == 0)
                await service.close()
            }
        }
    }
}
