import Intercom
import IntercomTestSupport
import IntercomTesting
import Testing
@_spi(IntercomInternals) import IntercomTransport

/// The in-memory connection: real peers, real frames, no kernel; time moves
/// only when a test moves it, so these tests never wait on the wall clock.
/// (The resource check is their safety net: a regression that leaves an
/// awaited event unsent ends the run with the test's name instead of hanging.)
@Suite struct InMemoryConnectionTests {
    /// A connection whose second peer serves `hang` (never answers; tells the
    /// returned stream when it is cancelled), with a call to it from the first
    /// peer already sent and its timers armed.
    static func hangingCall(timeout: Duration) async throws -> (
        connection: InMemoryConnection, call: Task<Int, any Error>, cancelled: AsyncStream<Void>
    ) {
        let (cancelled, cancel) = AsyncStream.makeStream(of: Void.self)
        let router = Router()
        try router.register("hang") { (_: Int, _: CallContext) -> Int in
            let (never, end) = AsyncStream.makeStream(of: Never.self)
            for await _ in never {}  // ends when the handler's task is cancelled
            end.finish()
            cancel.yield()
            throw CancellationError()
        }
        let connection = try await InMemoryConnection.open(second: router)
        let call = Task(executorPreference: connection.first.executor) {
            try await connection.first.call("hang", 1, returning: Int.self, timeout: timeout)
        }
        await connection.settle()
        return (connection, call, cancelled)
    }

    @Test func callsMessagesAndEventsCrossBothWays() async throws {
        try await withResourceCheck {
            let first = Router()
            try first.register("name") { (_: Int, _: CallContext) in "first" }
            let second = Router()
            try second.register("math.double") { (value: Int, _: CallContext) in value * 2 }
            let connection = try await InMemoryConnection.open(first: first, second: second)
            #expect(connection.first.medium == .inMemory)
            #expect(try await connection.first.call("math.double", 21, returning: Int.self) == 42)
            #expect(try await connection.second.call("name", 0, returning: String.self) == "first")
            let events = connection.second.events("ticks", as: Int.self)
            try await connection.second.send("hello", "one-way")
            #expect(try await connection.first.receive(as: String.self) == "one-way")
            await connection.settle()  // the subscription reached the other side
            _ = try connection.first.publish("ticks", 7)
            var iterator = events.makeAsyncIterator()
            #expect(try await iterator.next() == .event(7))
            await connection.close()
        }
    }

    /// `timeout: nil` means the connection's default for receives too: by default
    /// as long as it takes, or ``Peer/Configuration/defaultReceiveTimeout``.
    @Test func aReceiveWithoutATimeoutWaitsForTheConnectionsDefault() async throws {
        try await withResourceCheck {
            var configuration = Peer.Configuration()
            configuration.defaultReceiveTimeout = .seconds(5)
            let connection = try await InMemoryConnection.open(configuration: configuration)
            let ended = Locked(false)
            let receive = Task(executorPreference: connection.first.executor) {
                defer { ended.withLock { $0 = true } }
                return try await connection.first.receiveMessage()
            }
            await connection.settle()
            await connection.advanceTime(by: .seconds(4))
            #expect(!ended.withLock { $0 }, "still waiting after 4 of its 5 seconds")
            await connection.advanceTime(by: .seconds(1))
            do {
                _ = try await receive.value
                Issue.record("a message arrived from nowhere")
            } catch let error as IntercomError {
                #expect(error.code == .timeout)
            }
            await connection.close()
        }
    }

    /// A receiver of batches that waits gets what arrives as one batch, in order
    /// (not the first message alone); its timeout passes on the virtual clock;
    /// once the connection ends it gets what was left, then the end.
    @Test func aWaitingBatchReceiverGetsTheBatchWholeAndItsTimeout() async throws {
        try await withResourceCheck {
            let connection = try await InMemoryConnection.open()
            let first = Task(executorPreference: connection.second.executor) {
                try await connection.second.receiveMessages(timeout: .seconds(10))
            }
            await connection.settle()
            try await connection.first.send(contentsOf: Array(0..<100))
            await connection.settle()
            #expect(try await first.value.map { try $0.decode(as: Int.self) } == Array(0..<100))

            let ended = Locked(false)
            let empty = Task(executorPreference: connection.second.executor) {
                defer { ended.withLock { $0 = true } }
                return try await connection.second.receiveMessages(timeout: .seconds(5))
            }
            await connection.settle()
            await connection.advanceTime(by: .seconds(4))
            #expect(!ended.withLock { $0 }, "still waiting after 4 of its 5 seconds")
            await connection.advanceTime(by: .seconds(1))
            let timedOut = await #expect(throws: IntercomError.self) { _ = try await empty.value }
            #expect(timedOut?.code == .timeout)

            try await connection.first.send(contentsOf: [7, 8])
            await connection.settle()
            await connection.first.close()
            await connection.settle()
            #expect(try await connection.second.receiveMessages(timeout: .seconds(1)).map { try $0.decode(as: Int.self) } == [7, 8])
            let end = await #expect(throws: IntercomError.self) { _ = try await connection.second.receiveMessages(timeout: .seconds(1)) }
            #expect(end?.code == .closed || end?.code == .peerLost, "\(String(describing: end))")
            await connection.close()
        }
    }

    /// A 30-second timeout passes when the test says so: the call fails with
    /// `timeout` and the handler is cancelled at the same virtual instant.
    @Test func aCallTimesOutAtItsVirtualDeadlineAndTheHandlerIsCancelled() async throws {
        try await withResourceCheck {
            let (connection, call, cancelled) = try await Self.hangingCall(timeout: .seconds(30))
            #expect(connection.first.statistics.pendingCalls == 1)
            await connection.advanceTime(by: .seconds(29))
            #expect(connection.first.statistics.pendingCalls == 1, "nothing may expire before its deadline")
            await connection.advanceTime(by: .seconds(1))
            let error = await #expect(throws: IntercomError.self) { try await call.value }
            #expect(error?.code == .timeout)
            var iterator = cancelled.makeAsyncIterator()
            #expect(await iterator.next() != nil, "the handler was cancelled")
            #expect(connection.elapsed == .seconds(30))
            await connection.close()
        }
    }

    /// Each handler is cancelled at its own deadline, carried in its call frame,
    /// even when the caller's cancel frames never arrive; a handler with time
    /// left keeps running. Handlers run on the connection's loop here, so after
    /// `settle()` the count of running handlers is exact.
    @Test func handlersStopAtTheirOwnDeadlinesWithoutACancelFrame() async throws {
        try await withResourceCheck {
            let (cancelled, cancel) = AsyncStream.makeStream(of: Int.self)
            let router = Router()
            try router.register("work.wait") { (id: Int, _: CallContext) -> Int in
                let (never, end) = AsyncStream.makeStream(of: Never.self)
                for await _ in never {}
                end.finish()
                cancel.yield(id)
                throw CancellationError()
            }
            var configuration = Peer.Configuration()
            configuration.handlerExecution = .connectionThread
            let connection = try await InMemoryConnection.open(second: router, configuration: configuration)
            let caller = connection.first
            let calls = [(1, Duration.seconds(60)), (2, .milliseconds(200)), (3, .milliseconds(400))].map { id, timeout in
                Task(executorPreference: caller.executor) { try await caller.call("work.wait", id, returning: Int.self, timeout: timeout) }
            }
            await connection.settle()
            #expect(connection.second.statistics.runningHandlers == 3)
            connection.dropFrames(from: .first, count: 10)  // every cancel frame the caller sends is lost
            var order = cancelled.makeAsyncIterator()
            await connection.advanceTime(by: .milliseconds(200))
            #expect(await order.next() == 2)
            #expect(connection.second.statistics.runningHandlers == 2)
            await connection.advanceTime(by: .milliseconds(200))
            #expect(await order.next() == 3)
            #expect(connection.second.statistics.runningHandlers == 1, "the 60 s call is still being handled")
            for call in calls[1...] {
                let error = await #expect(throws: IntercomError.self) { try await call.value }
                #expect(error?.code == .timeout)
            }
            calls[0].cancel()
            await connection.close()
        }
    }

    /// A user-style example: a service that answers quickly when the caller
    /// is in a hurry. With virtual time the handler sees exactly the time the
    /// caller allowed, every run.
    @Test func exampleAServiceThatAdaptsToItsCallersDeadline() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("forecast") { (_: String, context: CallContext) -> String in
                guard let left = context.remainingTime else { return "detailed" }
                return left < .seconds(1) ? "quick (\(left))" : "detailed (\(left))"
            }
            let connection = try await InMemoryConnection.open(second: router)
            #expect(try await connection.first.call("forecast", "Berlin", returning: String.self, timeout: .milliseconds(500)) == "quick (0.5 seconds)")
            #expect(try await connection.first.call("forecast", "Berlin", returning: String.self, timeout: .seconds(10)) == "detailed (10.0 seconds)")
            await connection.close()
        }
    }

    /// A stalled direction fills up: the sender waits at its watermark instead
    /// of queueing without bound, and goes on once the stall ends.
    @Test func aStalledDirectionMakesTheSenderWaitUntilItResumes() async throws {
        try await withResourceCheck {
            var configuration = Peer.Configuration()
            configuration.outboundHighWatermark = 4096
            configuration.outboundLowWatermark = 1024
            let connection = try await InMemoryConnection.open(configuration: configuration)
            connection.stall(.first)
            let payload = [UInt8](repeating: 7, count: 1000)
            let sender = Task(executorPreference: connection.first.executor) {
                for _ in 0..<8 { try await connection.first.send("blob", payload) }
            }
            await connection.settle()
            #expect(connection.first.statistics.blockedSenders == 1)
            connection.resume(.first)
            try await sender.value
            var received = 0
            while received < 8 { received += try await connection.second.receiveMessages().count }
            #expect(received == 8)
            await connection.close()
        }
    }

    /// A frame whose magic byte is flipped on the way: the receiver refuses it
    /// (`badMagic`), the connection ends on both sides, the pending call fails.
    @Test func aCorruptedFrameEndsTheConnectionAndFailsThePendingCall() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("echo") { (value: Int, _: CallContext) in value }
            let connection = try await InMemoryConnection.open(second: router)
            #expect(try await connection.first.call("echo", 1, returning: Int.self) == 1)
            connection.corruptNextFrame(from: .first, at: 0)
            let error = await #expect(throws: IntercomError.self) {
                _ = try await connection.first.call("echo", 2, returning: Int.self)
            }
            #expect(error?.code == .peerLost || error?.code == .protocolViolation, "\(String(describing: error))")
            await connection.first.waitUntilClosed()
            await connection.second.waitUntilClosed()
            await connection.close()
        }
    }

    /// A connection cut mid-call (a crash, a pulled cable): the caller learns
    /// `peerLost` at once, the handler is cancelled, both peers end.
    @Test func aCutConnectionFailsThePendingCallWithPeerLost() async throws {
        try await withResourceCheck {
            let (connection, call, cancelled) = try await Self.hangingCall(timeout: .seconds(60))
            #expect(connection.second.statistics.runningHandlers == 1)
            await connection.cut()
            let error = await #expect(throws: IntercomError.self) { try await call.value }
            #expect(error?.code == .peerLost)
            var iterator = cancelled.makeAsyncIterator()
            #expect(await iterator.next() != nil, "the handler was cancelled")
            await connection.first.waitUntilClosed()
            await connection.second.waitUntilClosed()
            #expect(connection.elapsed == .zero)
            await connection.close()
        }
    }

    /// A lost reply leaves the call to its own deadline — and only that call.
    @Test func aDroppedReplyLeavesTheCallToItsTimeout() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("echo") { (value: Int, _: CallContext) in value }
            // Handlers on the loop: the first reply is surely the one lost (on the
            // pool, the second call's reply could overtake it and be dropped instead).
            var configuration = Peer.Configuration()
            configuration.handlerExecution = .connectionThread
            let connection = try await InMemoryConnection.open(second: router, configuration: configuration)
            connection.dropFrames(from: .second, count: 1)
            let lost = Task(executorPreference: connection.first.executor) {
                try await connection.first.call("echo", 1, returning: Int.self, timeout: .seconds(5))
            }
            await connection.settle()
            #expect(try await connection.first.call("echo", 2, returning: Int.self, timeout: .seconds(5)) == 2)
            await connection.advanceTime(by: .seconds(5))
            let error = await #expect(throws: IntercomError.self) { try await lost.value }
            #expect(error?.code == .timeout)
            await connection.close()
        }
    }

    /// A connection that serves one handler at a time: `gate` holds the slot
    /// until the test finishes `release`; `probe` reports when it starts and
    /// when it is cancelled. Handlers run on the connection's loop, so after
    /// `settle()` what the statistics say is exact.
    static func oneSlotConnection() async throws -> (
        InMemoryConnection, release: AsyncStream<Void>.Continuation, probe: Locked<[String]>
    ) {
        let (gate, release) = AsyncStream.makeStream(of: Void.self)
        let probe = Locked<[String]>([])
        let router = Router()
        try router.register("gate") { (_: Int, _: CallContext) -> Int in
            for await _ in gate {}
            return 0
        }
        try router.register("probe") { (_: Int, _: CallContext) -> Int in
            probe.withLock { $0.append("started") }
            let (never, end) = AsyncStream.makeStream(of: Never.self)
            for await _ in never {}  // ends when the handler's task is cancelled
            end.finish()
            probe.withLock { $0.append("cancelled") }
            throw CancellationError()
        }
        var configuration = Peer.Configuration()
        configuration.maxConcurrentHandlers = 1
        configuration.handlerExecution = .connectionThread
        let connection = try await InMemoryConnection.open(second: router, configuration: configuration)
        return (connection, release, probe)
    }

    /// A call cancelled while it waits for a handler slot never runs: the
    /// caller gave up, and its bytes are freed at once.
    @Test func aCallCancelledWhileQueuedNeverRuns() async throws {
        try await withResourceCheck {
            let (connection, release, probe) = try await Self.oneSlotConnection()
            let caller = connection.first
            let gate = Task(executorPreference: caller.executor) { try await caller.call("gate", 0, returning: Int.self) }
            await connection.settle()
            let queued = Task(executorPreference: caller.executor) { try await caller.call("probe", 0, returning: Int.self) }
            await connection.settle()
            #expect(connection.second.statistics.queuedCalls == 1)
            queued.cancel()
            let error = await #expect(throws: IntercomError.self) { try await queued.value }
            #expect(error?.code == .cancelled)
            await connection.settle()
            #expect(connection.second.statistics.queuedCalls == 0, "the cancel dropped the queued call")
            release.finish()
            #expect(try await gate.value == 0)
            await connection.settle()
            #expect(connection.second.statistics.runningHandlers == 0, "the dropped call never started")
            #expect(probe.withLock { $0 }.isEmpty)
            await connection.close()
        }
    }

    /// A queued call's deadline counts from its arrival: one that waited past
    /// it for a slot is cancelled as soon as it starts (here its caller's
    /// cancel frame is lost, so only the deadline can stop it).
    @Test func aQueuedCallsDeadlineCountsFromItsArrival() async throws {
        try await withResourceCheck {
            let (connection, release, probe) = try await Self.oneSlotConnection()
            let caller = connection.first
            let gate = Task(executorPreference: caller.executor) {
                try await caller.call("gate", 0, returning: Int.self, timeout: .seconds(60))
            }
            await connection.settle()
            let late = Task(executorPreference: caller.executor) {
                try await caller.call("probe", 0, returning: Int.self, timeout: .seconds(1))
            }
            await connection.settle()
            connection.dropFrames(from: .first, count: 1)  // the cancel sent at the caller's timeout
            await connection.advanceTime(by: .seconds(2))
            let error = await #expect(throws: IntercomError.self) { try await late.value }
            #expect(error?.code == .timeout)
            #expect(connection.second.statistics.queuedCalls == 1, "the lost cancel left it queued")
            release.finish()
            #expect(try await gate.value == 0)
            await connection.settle()
            #expect(probe.withLock { $0 } == ["started", "cancelled"], "past its deadline when it started")
            #expect(connection.elapsed == .seconds(2))
            await connection.close()
        }
    }

    /// Whether the connection ended decides a subscription under the same lock
    /// that ends them all: one made after the end ends at once, with the reason.
    @Test func aSubscriptionMadeAfterTheEndEndsAtOnceWithTheReason() async throws {
        try await withResourceCheck {
            let connection = try await InMemoryConnection.open()
            await connection.cut()
            #expect(connection.second.isClosed)
            var iterator = connection.second.events("ticks", as: Int.self).makeAsyncIterator()
            let error = await #expect(throws: IntercomError.self) { _ = try await iterator.next() }
            #expect(error?.code == .peerLost)
            await connection.close()
        }
    }
}
