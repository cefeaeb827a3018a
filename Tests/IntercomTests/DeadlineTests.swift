import Intercom
import IntercomTestSupport
import IntercomTestHelper
import IntercomTesting
import IntercomWire
import NIOCore
import Testing

/// One timer per connection serves every deadline (Peer's `DeadlineTimer`): these
/// tests give deadlines out of order, so a later call must re-arm the timer for
/// an earlier deadline and a fired timer must arm the next one.
@Suite(.serialized) struct DeadlineTests {
    /// Caller side: a short call made after a long one still times out on time,
    /// while the long one stays pending; a second short call after the timer fired
    /// times out too.
    @Test(arguments: TransportKind.allCases)
    func shortDeadlinesAfterALongOneStillExpire(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let long = Task { try await peer.call("work.slow", 0, returning: Int.self, timeout: .seconds(60)) }
            // The handler says when it starts: the long call is in flight from then on.
            #expect(try await peer.receiveMessage(timeout: .seconds(20)).method == "work.started")
            #expect(peer.statistics.pendingCalls == 1)
            for attempt in 1...2 {
                let error = await expectIntercomError(.timeout) {
                    _ = try await peer.call("work.slow", attempt, returning: Int.self, timeout: .milliseconds(200))
                }
                #expect(error?.message.contains("0.2 seconds") == true, "\(String(describing: error))")
                #expect(peer.statistics.pendingCalls == 1, "only the long call is still waiting")
            }
            long.cancel()
            await expectIntercomError(.cancelled) { _ = try await long.value }
            await child.shutdown()
        }
    }

    /// A reply that comes after the caller gave up is dropped (and counted); the
    /// connection carries on.
    @Test func aLateReplyIsDroppedAndTheConnectionCarriesOn() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            // probe.concurrency simulates 600 ms of work and ignores cancellation.
            await expectIntercomError(.timeout) {
                _ = try await child.peer.call("probe.concurrency", 600, returning: Int.self, timeout: .milliseconds(100))
            }
            #expect(child.peer.statistics.lateReplies == 0)
            try #require(await child.peer.waitForStatistics(timeout: .seconds(10)) { $0.lateReplies == 1 }, "the late reply arrived")
            #expect(child.peer.statistics.pendingCalls == 0)
            #expect(try await child.peer.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self) == 3)
            await child.shutdown()
        }
    }

    /// Handler side: the caller (a raw client that never sends cancel frames) gives
    /// three calls deadlines of 60 s, 200 ms and 400 ms; the handlers of the short
    /// ones are cancelled when their deadlines pass, in deadline order, and the long
    /// one keeps running.
    @Test func handlersAreCancelledAtTheirDeadlinesWithoutACancelFrame() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register("work.wait") { (_: Int, _: CallContext) -> Int in
                let (never, continuation) = AsyncStream.makeStream(of: Never.self)
                for await _ in never {}  // ends when the handler's task is cancelled
                continuation.finish()
                try Task.checkCancellation()
                return 0
            }
            let sockets = try SocketPair()
            let raw = RawClient(fileDescriptor: sockets.second)
            raw.write(RawClient.hello())
            let peer = try await Peer.adopt(fileDescriptor: sockets.first, router: router)
            #expect(raw.readFrames(1).first?.kind == .hello)
            for (id, timeout) in [(1, Duration.seconds(60)), (2, .milliseconds(200)), (3, .milliseconds(400))] {
                var frame = ByteBuffer()
                let mark = FrameHeader.begin(into: &frame, kind: .call, id: UInt64(id), method: "work.wait", timeout: timeout)
                try BinaryEncoder().encode(id, into: &frame)
                FrameHeader.finish(mark, in: &frame)
                raw.write(frame)
            }
            let answers = raw.readFrames(2)
            #expect(answers.map(\.id) == [2, 3])
            #expect(answers.allSatisfy { $0.kind == .error })
            let codes = answers.compactMap { try? ErrorBody(from: $0.payload).code }
            #expect(codes == ["timeout", "timeout"], "a handler stopped by its deadline answers timeout: \(codes)")
            // (A handler counts as running until just after its reply is queued.)
            try #require(await peer.waitForStatistics(timeout: .seconds(10)) { $0.runningHandlers == 1 }, "only the 60 s call is still being handled")
            await peer.close()
            raw.close()
        }
    }
}

/// A task waiting on an event subscription honours cancellation: it ends with
/// `CancellationError` instead of waiting for an event that may never come, and
/// the subscription itself carries on.
@Suite struct EventWaitCancellationTests {
    @Test func aTaskWaitingForAnEventEndsWhenCancelledAndTheSubscriptionCarriesOn() async throws {
        try await withResourceCheck {
            // In memory: `settle()` says when the subscription has reached the publisher.
            let connection = try await InMemoryConnection.open()
            let (publisher, subscriber) = (connection.first, connection.second)
            let ticks = subscriber.events("ticks", as: Int.self)
            let waiting = Task {
                for try await _ in ticks {}
            }
            waiting.cancel()
            await #expect(throws: CancellationError.self) { try await waiting.value }
            // The subscription is still there: an event published now arrives.
            await connection.settle()
            #expect(try publisher.publish("ticks", 7) != .notSubscribed)
            var iterator = ticks.makeAsyncIterator()
            let next = try await iterator.next()
            guard case .event(let value)? = next else {
                Issue.record("expected the event, got \(String(describing: next))")
                return
            }
            #expect(value == 7)
            await connection.close()
        }
    }
}
