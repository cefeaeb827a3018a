import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Synchronization
import Testing
import CIntercomShims

@_spi(IntercomInternals) import IntercomTransport

#if canImport(Glibc)
import Glibc
#endif

/// The helper as a worker (it finds its parent connection through the environment).
func helperSpec(_ arguments: [String] = []) -> WorkerSpec {
    // No crash backtraces: a child that dies of SIGSEGV should die at once.
    WorkerSpec(executablePath: ChildProcess.helperPath, arguments: arguments, environment: ["SWIFT_BACKTRACE": "enable=no"])
}

/// Whether process `pid` exists (and is not a zombie).
func isAlive(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
    // Field 3 (after "pid (comm)") is the state; Z is a zombie.
    guard let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(close, offsetBy: 2)...].hasPrefix("Z")
}

@Suite(.serialized) struct ProcessTests {
    @Test func aSpawnedWorkerIsConnectedAndHasOnlyItsOwnDescriptors() async throws {
        try await withResourceCheck {
            let worker = try await Worker.spawn(helperSpec(), configuration: ChildProcess.configuration())
            #expect(try await worker.peer.call("peer.pid", 0, returning: Int.self) == Int(worker.pid))
            #expect(worker.peer.remote.reportedPID == worker.pid)
            // 0 is the connection (named by INTERCOM_PARENT_FD); 1 and 2 are the parent's output.
            #expect(try await worker.peer.call("fds.inherited", 0, returning: [Int].self) == [0, 1, 2])
            #expect(await worker.stop() == .exited(0))
        }
    }

    @Test func aWorkerOnTheBusIsReachableBothWays() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let worker = try await Worker.spawn(helperSpec(["--serve", "w1", "--bus", temporary.directory]))
                #expect(try await worker.peer.call("peer.pid", 0, returning: Int.self) == Int(worker.pid))
                let viaBus = try await temporary.bus.connect(to: "w1", timeout: .seconds(20))
                #expect(try await viaBus.call("peer.pid", 0, returning: Int.self) == Int(worker.pid))
                #expect(try await viaBus.call("intercom.quit", 0, returning: Bool.self))
                await viaBus.waitUntilClosed()
                #expect(await worker.waitForExit() == .exited(0))
                await worker.peer.close()
            }
        }
    }

    @Test func twoHundredChildrenWithMixedExitsAreReportedAndReaped() async throws {
        try await withResourceCheck {
            let outcomes = Locked<[(expected: ProcessExitStatus, got: ProcessExitStatus)]>([])
            for batch in 0..<10 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in (batch * 20)..<(batch * 20 + 20) {
                        group.addTask {
                            let expected: ProcessExitStatus
                            let worker: Worker
                            switch index % 4 {
                            case 0:
                                expected = .exited(0)
                                worker = try await Worker.spawn(helperSpec(["--exit-after-handshake", "0"]))
                            case 1:
                                expected = .exited(1)
                                worker = try await Worker.spawn(helperSpec(["--exit-after-handshake", "1"]))
                            case 2:
                                expected = .signaled(SIGKILL)
                                worker = try await Worker.spawn(helperSpec())
                                worker.send(.kill)
                            default:
                                expected = .signaled(SIGSEGV)
                                worker = try await Worker.spawn(helperSpec(["--signal-after-handshake", "\(SIGSEGV)"]))
                            }
                            let status = await worker.waitForExit()
                            await worker.peer.close()
                            outcomes.withLock { $0.append((expected, status)) }
                        }
                    }
                    try await group.waitForAll()
                }
            }
            let all = outcomes.withLock { $0 }
            #expect(all.count == 200)
            let wrong = all.filter { $0.expected != $0.got }
            #expect(wrong.isEmpty, "misreported: \(wrong.prefix(5))")
            // withResourceCheck: no child (zombie or not) is left.
        }
    }

    @Test func childrenDieWithTheirParent() async throws {
        try await withResourceCheck {
            // The helper is the parent here: it spawns a worker of its own that would
            // otherwise run forever (it ignores SIGTERM and goodbyes).
            let parent = try await ChildProcess.spawn(.socketpair, arguments: ["--spawn-grandchild"])
            let message = try await parent.peer.receiveMessage(timeout: .seconds(20))
            #expect(message.method == "grandchild")
            let grandchild = Int32(try message.decode(as: Int.self))
            #expect(isAlive(grandchild))
            // A pidfd becomes readable when its process exits: the event to wait for.
            let pidfd = c_intercom_pidfd_open(grandchild)
            try #require(pidfd >= 0, "pidfd_open: errno \(errno)")
            defer { close(pidfd) }
            parent.kill(SIGKILL)
            await parent.waitForExit()
            await parent.peer.waitUntilClosed()
            let exited = await onPlainThread { () -> Bool in
                var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                return poll(&entry, 1, 1000) == 1
            }
            #expect((try? exited.get()) == true, "the grandchild still ran a second after its parent died")
        }
    }

    /// Workers are reaped through their own pidfd: a child someone else started
    /// (here with Foundation's Process) keeps its exit status for its owner.
    @Test func otherCodesChildrenAreNeverReaped() async throws {
        try await withResourceCheck {
            let other = Process()
            other.executableURL = URL(fileURLWithPath: "/bin/sh")
            other.arguments = ["-c", "exit 7"]
            let (exited, continuation) = AsyncStream.makeStream(of: Int32.self)
            other.terminationHandler = { continuation.yield($0.terminationStatus); continuation.finish() }
            try other.run()
            for _ in 0..<5 {
                let worker = try await Worker.spawn(helperSpec(["--exit-after-handshake", "0"]))
                #expect(await worker.waitForExit() == .exited(0))
                await worker.peer.close()
            }
            var status: Int32 = -1
            for await code in exited { status = code }
            #expect(status == 7, "the other child's status reached its owner")
        }
    }

    @Test func aCrashLoopStopsAtThePolicyLimitAndSaysSo() async throws {
        try await withResourceCheck {
            let supervisor = Supervisor()
            async let supervising: Void = supervisor.run()
            supervisor.start(
                "crasher", helperSpec(["--exit-now", "3"]),
                policy: .onFailure(maxRestarts: 3, window: .seconds(60), backoff: .milliseconds(10)))
            var events: [LifecycleEvent] = []
            for await event in supervisor.events {
                events.append(event)
                if case .failed = event { break }
            }
            let exits = events.filter { if case .exited(_, _, .exited(3)) = $0 { true } else { false } }
            let restarts = events.compactMap { event -> Int? in
                if case .restarting(_, let attempt, _) = event { attempt } else { nil }
            }
            #expect(exits.count == 4, "the first run and three restarts: \(events)")
            #expect(restarts == [1, 2, 3])
            guard case .failed(let name, let reason)? = events.last else {
                Issue.record("no failed event: \(events)")
                return
            }
            #expect(name == "crasher")
            #expect(reason.contains("exited(3)"))
            #expect(supervisor.restartCount(of: "crasher") == 3)
            await supervisor.stopAll()
            await supervising
        }
    }

    @Test func aSupervisedWorkerKilledWithSIGKILLIsRestarted() async throws {
        try await withResourceCheck {
            let supervisor = Supervisor()
            supervisor.start("steady", helperSpec(), policy: .onFailure(backoff: .milliseconds(10)))
            async let supervising: Void = supervisor.run()
            var iterator = supervisor.events.makeAsyncIterator()
            guard case .started(_, let first)? = await iterator.next() else { throw IntercomError(.closed, "no start") }
            let firstWorker = try #require(supervisor.worker(named: "steady"))
            let pending = Task { try await firstWorker.peer.call("hang", 0, returning: Int.self, timeout: .seconds(60)) }
            _ = try await firstWorker.peer.receiveMessage(timeout: .seconds(10))  // "hang.started"
            firstWorker.send(.kill)
            await expectIntercomError(.peerLost) { _ = try await pending.value }
            #expect(await iterator.next() == .exited(name: "steady", pid: first, status: .signaled(SIGKILL)))
            guard case .restarting(_, 1, _)? = await iterator.next() else { throw IntercomError(.closed, "no restart") }
            guard case .started(_, let second)? = await iterator.next() else { throw IntercomError(.closed, "no second start") }
            #expect(second != first)
            #expect(try await supervisor.worker(named: "steady")?.peer.call("peer.pid", 0, returning: Int.self) == Int(second))
            await supervisor.stopAll()
            var rest: [LifecycleEvent] = []
            while let event = await iterator.next() { rest.append(event) }
            #expect(rest == [.exited(name: "steady", pid: second, status: .exited(0)), .stopped(name: "steady")])
            await supervising
        }
    }

    @Test func aScopedWorkerIsStoppedAndReapedWhenItsScopeEndsEvenByAnError() async throws {
        try await withResourceCheck {
            let seen = Locked<Worker?>(nil)
            let pid = try await Worker.withWorker(helperSpec()) { worker in
                seen.withLock { $0 = worker }
                return try await worker.peer.call("peer.pid", 0, returning: Int.self)
            }
            let worker = try #require(seen.withLock { $0 })
            #expect(pid == Int(worker.pid))
            #expect(worker.exitStatus == .exited(0), "said goodbye, exited by itself, reaped before the scope returned")
            #expect(!isAlive(worker.pid))

            struct Abandoned: Error {}
            await #expect(throws: Abandoned.self) {
                try await Worker.withWorker(helperSpec()) { worker in
                    seen.withLock { $0 = worker }
                    throw Abandoned()
                }
            }
            let thrower = try #require(seen.withLock { $0 })
            #expect(thrower.exitStatus == .exited(0))
            #expect(!isAlive(thrower.pid))
        }
    }

    @Test func aCancelledScopeStillStopsItsWorkerGracefully() async throws {
        try await withResourceCheck {
            let seen = Locked<Worker?>(nil)
            let (ready, readyContinuation) = AsyncStream.makeStream(of: Void.self)
            let scope = Task {
                try await Worker.withWorker(helperSpec(), teardown: .graceful(.seconds(30))) { worker in
                    seen.withLock { $0 = worker }
                    readyContinuation.yield()
                    // Waits for the cancellation (a receive that never gets a message).
                    _ = try await worker.peer.receiveMessage(timeout: .seconds(60))
                }
            }
            for await _ in ready { break }
            scope.cancel()
            await #expect(throws: (any Error).self) { try await scope.value }
            let worker = try #require(seen.withLock { $0 })
            // The teardown's first wait (up to 15 s for the goodbye to end it) ran
            // its course in the cancelled task: the worker exited by itself, where
            // a wait that slept in the task would have ended at once and killed it.
            #expect(worker.exitStatus == .exited(0))
            #expect(!isAlive(worker.pid))
        }
    }

    @Test func aTeardownIsData() async throws {
        try await withResourceCheck {
            // A worker that ignores the goodbye and SIGTERM: an interrupt, then the final SIGKILL.
            let worker = try await Worker.spawn(helperSpec(["--linger"]))
            let status = await worker.stop(Teardown(steps: [.signal(.interrupt, wait: .seconds(10))]))
            #expect(status == .signaled(SIGINT), "the first step's signal ended it")
            #expect(Teardown.graceful(.seconds(4)).steps == [.goodbye(wait: .seconds(2)), .signal(.terminate, wait: .seconds(2))])
            #expect(Signal.terminate.description == "SIGTERM")
            #expect(Signal(rawValue: 64).description == "signal 64")
        }
    }

    @Test func aSupervisorsRunOwnsItsWorkers() async throws {
        try await withResourceCheck {
            let supervisor = Supervisor()
            supervisor.start("steady", helperSpec(), policy: .always(backoff: .milliseconds(10)))
            let running = Task { await supervisor.run() }
            var events = supervisor.events.makeAsyncIterator()
            guard case .started(_, let pid)? = await events.next() else { throw IntercomError(.closed, "no start") }
            supervisor.start("steady", helperSpec())  // the name is taken: refused, and said so
            guard case .failed("steady", let reason)? = await events.next() else { throw IntercomError(.closed, "no refusal") }
            #expect(reason.contains("already supervised"))
            // Cancelling the run stops the worker (gracefully: it exits by itself) and
            // does not restart it, although its policy is `always`.
            running.cancel()
            await running.value
            var rest: [LifecycleEvent] = []
            while let event = await events.next() { rest.append(event) }
            #expect(rest == [.exited(name: "steady", pid: pid, status: .exited(0)), .stopped(name: "steady")])
            #expect(!isAlive(pid), "reaped before run() returned")
            supervisor.start("late", helperSpec())
            #expect(supervisor.worker(named: "late") == nil, "nothing starts after run() ended")
            await supervisor.run()  // a supervisor runs once: this returns at once (it used to stop the process)
        }
    }

    @Test func aChildThatIgnoresSIGTERMIsKilledAfterTheGracePeriod() async throws {
        try await withResourceCheck {
            let worker = try await Worker.spawn(helperSpec(["--linger"]))
            // A call in flight when the stop begins fails with a clear error; it does not vanish.
            let inFlight = Task { try await worker.peer.call("hang", 0, returning: Int.self, timeout: .seconds(60)) }
            _ = try await worker.peer.receiveMessage(timeout: .seconds(10))  // "hang.started"
            let start = ContinuousClock.now
            let status = await worker.stop(grace: .seconds(1))
            await expectIntercomError(.closed) { _ = try await inFlight.value }
            let took = ContinuousClock.now - start
            #expect(status == .signaled(SIGKILL))
            #expect(took >= .seconds(1))
            #expect(took <= .milliseconds(1200), "grace + at most 200 ms, took \(took)")
        }
    }
}

/// swift-service-lifecycle: SIGTERM stops a bus service and a supervisor in one ServiceGroup cleanly.
@Suite(.serialized) struct LifecycleTests {
    @Test func sigtermShutsTheServiceAndItsWorkersDownCleanly() async throws {
        try await withResourceCheck {
            try await withTemporaryBus { temporary in
                let process = try ServiceProcess(name: "managed", bus: temporary, arguments: ["--lifecycle"])
                let peer = try await temporary.bus.connect(to: "managed", timeout: .seconds(30))
                let workerPID = Int32(try await peer.call("lifecycle.worker.pid", 0, returning: Int.self))
                #expect(isAlive(workerPID))
                process.kill(SIGTERM)
                await peer.waitUntilClosed()
                #expect(await process.waitForExit() == 0, "a graceful shutdown exits 0")
                #expect(!isAlive(workerPID), "the supervised worker was stopped and reaped")
                // withTemporaryBus: the service's files are gone (its name was given up).
            }
        }
    }
}
