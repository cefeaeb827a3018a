import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Testing

/// Runs `body` on a thread of its own (blocking calls and ring waits block their thread).
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

/// Runs `body` on a plain thread (as code that is not `async` would) and returns its result.
func onPlainThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async -> Result<T, any Error> {
    await onThread { Result { try body() } }
}

/// Calls `callBlocking` from a synchronous function (allowed even when the caller is async).
func blockingAdd(_ peer: Peer) throws -> Int {
    try peer.callBlocking("math.add", AddRequest(a: 1, b: 1), returning: Int.self)
}

/// Blocking, deferred and polled call styles (epyrpc, IPC::Manager) against a real child.
@Suite(.serialized) struct CallStyleTests {
    @Test func blockingCallsWithATimeout() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            let sum = await onPlainThread {
                try peer.callBlocking("math.add", AddRequest(a: 20, b: 22), returning: Int.self, timeout: .seconds(10))
            }
            #expect(try sum.get() == 42)
            let late = await onPlainThread {
                try peer.callBlocking("hang", 0, returning: Int.self, timeout: .milliseconds(200))
            }
            #expect(throws: IntercomError.self) { try late.get() }
            if case .failure(let error as IntercomError) = late { #expect(error.code == .timeout) }
            // On the connection's own thread a blocking call would deadlock: refused.
            let onLoop: Result<Int, any Error> = await withTaskExecutorPreference(peer.executor) {
                Result { try blockingAdd(peer) }
            }
            if case .failure(let error as IntercomError) = onLoop {
                #expect(error.code == .busy)
            } else {
                Issue.record("expected busy, got \(onLoop)")
            }
            await child.shutdown()
        }
    }

    /// ductworks' `poll(timeout)`: whether a message waits, without taking it.
    @Test func waitingForAMessageDoesNotTakeIt() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            #expect(!peer.hasWaitingMessage)
            #expect(try await peer.waitForMessage(timeout: .milliseconds(50)) == false)
            try await peer.send(Note(index: 7, text: "ping"))  // the child echoes notes
            #expect(try await peer.waitForMessage(timeout: .seconds(30)))
            #expect(peer.hasWaitingMessage)
            #expect(try await peer.waitForMessage(timeout: .seconds(1)), "still there: waiting took nothing")
            let blocking = await onPlainThread { try peer.waitForMessageBlocking(timeout: .seconds(1)) }
            #expect(try blocking.get())
            #expect(try await peer.receive(as: Note.self, timeout: .seconds(5)).index == 7)
            #expect(!peer.hasWaitingMessage)
            await child.shutdown()
            // The connection ended with nothing left to receive: waiting says so.
            let ended = await #expect(throws: IntercomError.self) { _ = try await peer.waitForMessage(timeout: .seconds(5)) }
            #expect(ended.map { [.peerLost, .closed].contains($0.code) } ?? false, "\(String(describing: ended))")
        }
    }

    /// ductworks' readiness: a descriptor for select/poll, readable exactly
    /// while a message waits (or once the connection has ended).
    @Test(arguments: [TransportKind.socketpair, .sharedMemory])
    func aReadinessDescriptorForPollIsReadableWhileAMessageWaits(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let fd = try peer.messageReadinessDescriptor()
            #expect(try peer.messageReadinessDescriptor() == fd, "one descriptor per peer")
            func readable(within milliseconds: Int32) async -> Bool {
                await onThread {
                    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    return poll(&entry, 1, milliseconds) == 1 && entry.revents & Int16(POLLIN) != 0
                }
            }
            #expect(await readable(within: 0) == false)
            try await peer.send(Note(index: 1, text: "one"))  // echoed back
            try await peer.send(Note(index: 2, text: "two"))
            #expect(await readable(within: 30_000))
            _ = try await peer.receive(as: Note.self, timeout: .seconds(30))
            _ = try await peer.receive(as: Note.self, timeout: .seconds(30))
            #expect(await readable(within: 0) == false, "drained: not readable")
            await child.shutdown()
            #expect(await readable(within: 30_000), "ended: readable, and receiving says why")
        }
    }

    /// A plain connection closed by this side ends its states with `closed`.
    @Test func aConnectionClosedHereReportsClosed() async throws {
        try await withResourceCheck {
            let (first, second) = try await Peer.pair()
            var states = first.connectionStates().makeAsyncIterator()
            guard case .connected? = await states.next() else {
                Issue.record("expected .connected first")
                return
            }
            await first.close()
            #expect(await states.next() == .closed)
            #expect(await states.next() == nil)
            var late = first.connectionStates().makeAsyncIterator()
            _ = await late.next()
            #expect(await late.next() == .closed, "asked after the end: told at once")
            await second.close()
        }
    }

    /// magscope's sent/received accounting: what one side counts as sent, the
    /// other counts as received, frame for frame and byte for byte; graceful
    /// close reports it.
    @Test(arguments: [false, true])
    func bothSidesCountTheSameTraffic(sharedMemory: Bool) async throws {
        try await withResourceCheck {
            var configuration = Peer.Configuration()
            configuration.sharedMemory.isEnabled = sharedMemory
            let router = Router()
            try router.register("math.add") { (request: AddRequest, _) in request.a + request.b }
            let (client, server) = try await Peer.pair(routers: (nil, router), configuration: configuration)
            #expect(client.traffic.framesSent == 0 && client.traffic.framesReceived == 0, "the handshake is not counted")
            for index in 0..<3 { try await client.send("note", Note(index: index, text: String(repeating: "x", count: 100 * index))) }
            try await client.send(contentsOf: [1, 2, 3, 4])  // one batch of four frames
            for index in 0..<2 { _ = try await client.call("math.add", AddRequest(a: index, b: 1), returning: Int.self) }
            let sent = await client.close()
            await server.waitUntilClosed()
            let received = server.traffic
            #expect(sent.framesSent == 3 + 4 + 2 + 1, "messages, a batch of four, calls, the goodbye: \(sent)")
            #expect(sent.framesReceived == 2, "the replies: \(sent)")
            #expect(received.framesReceived == sent.framesSent, "\(received) against \(sent)")
            #expect(received.bytesReceived == sent.bytesSent, "\(received) against \(sent)")
            #expect(received.framesSent >= 2 && received.bytesSent >= sent.bytesReceived)
            #expect(sent.bytesSent > 300 + 20 * sent.framesSent, "payloads and headers: \(sent)")
        }
    }

    /// magscope's drain-until-quit: everything before the quit message is
    /// handled, in order; what comes after it stays queued.
    @Test func processingMessagesUntilAQuitMessage() async throws {
        try await withResourceCheck {
            let (sender, receiver) = try await Peer.pair()
            for value in 0..<5 { try await sender.send("work", value) }
            try await sender.send("quit", 0)
            try await sender.send("work", 99)
            var seen: [Int] = []
            let handled = try await receiver.processMessages(until: "quit", timeout: .seconds(30)) { message in
                seen.append(try message.decode(as: Int.self))
            }
            #expect(handled == 5)
            #expect(seen == [0, 1, 2, 3, 4])
            #expect(try await receiver.receive(as: Int.self, timeout: .seconds(5)) == 99)
            // A handler's error ends the loop and reaches the caller.
            try await sender.send("work", -1)
            await #expect(throws: IntercomError.self) {
                _ = try await receiver.processMessages(until: "quit", timeout: .seconds(30)) { message in
                    _ = try message.decode(as: String.self)  // an Int does not decode as a String
                }
            }
            await sender.close()
            await receiver.close()
        }
    }

    /// IPC::Manager's waiting on many handles: the first peer with a message
    /// waiting (or whose connection ended), nothing taken.
    @Test func theFirstOfSeveralPeersWithAMessage() async throws {
        try await withResourceCheck {
            let first = try await ChildProcess.spawn(.socketpair)
            let second = try await ChildProcess.spawn(.unix)
            let peers = [first.peer, second.peer]
            #expect(try await Peer.firstWithMessage(among: peers, timeout: .milliseconds(50)) == nil)
            try await second.peer.send(Note(index: 2, text: "b"))  // echoed back by the second child only
            let ready = try await Peer.firstWithMessage(among: peers, timeout: .seconds(30))
            #expect(ready === second.peer)
            #expect(second.peer.hasWaitingMessage, "nothing was taken")
            #expect(try await second.peer.receive(as: Note.self, timeout: .seconds(5)).index == 2)
            // A peer whose connection ended counts as ready: receiving from it says why.
            await first.shutdown()
            let ended = try await Peer.firstWithMessage(among: peers, timeout: .seconds(30))
            #expect(ended === first.peer)
            await second.shutdown()
        }
    }

    @Test func callsCollectedLaterPolledWaitedForOrCalledBack() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            // Still running: poll says so.
            let hanging = peer.startCall("hang", 0, returning: Int.self, timeout: .seconds(30))
            _ = try await peer.receiveMessage(timeout: .seconds(10))  // "hang.started"
            #expect(hanging.poll() == nil)
            #expect(!hanging.isCompleted)

            // A callback on completion.
            let (results, continuation) = AsyncStream.makeStream(of: Int.self)
            let add = peer.startCall("math.add", AddRequest(a: 2, b: 3), returning: Int.self)
            add.onCompletion { result in
                continuation.yield((try? result.get()) ?? -1)
                continuation.finish()
            }
            var iterator = results.makeAsyncIterator()
            #expect(await iterator.next() == 5)
            #expect(try add.poll()?.get() == 5)
            #expect(try await add.value == 5)

            // Blocking wait from a plain thread, with a timeout that is too short, then long enough.
            let slow = peer.startCall("probe.concurrency", 300, returning: Int.self)
            let tooSoon = await onPlainThread { try slow.waitBlocking(timeout: .milliseconds(20)) }
            if case .failure(let error as IntercomError) = tooSoon { #expect(error.code == .timeout) } else { Issue.record("\(tooSoon)") }
            let inTime = await onPlainThread { try slow.waitBlocking(timeout: .seconds(10)) }
            #expect((try? inTime.get()) != nil)

            // Cancelling tells the handler to stop; the handle reports it.
            hanging.cancel()
            await #expect(throws: IntercomError.self) { try await hanging.value }
            await child.shutdown()
        }
    }

    @Test func waitingForAllOutstandingCalls() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            let calls = (0..<5).map { _ in peer.startCall("probe.concurrency", 50, returning: Int.self) }
            try #require(await peer.waitForStatistics(timeout: .seconds(10)) { $0.pendingCalls == 5 }, "the calls are sent")
            try await peer.waitForOutstandingCalls(timeout: .seconds(10))
            #expect(peer.statistics.pendingCalls == 0)
            // Every reply has arrived (each handle stores its result right after).
            for call in calls { #expect(try await call.value >= 1) }

            let hanging = peer.startCall("hang", 0, returning: Int.self, timeout: .seconds(30))
            try #require(await peer.waitForStatistics(timeout: .seconds(10)) { $0.pendingCalls == 1 }, "the hanging call is sent")
            await expectIntercomError(.timeout) { try await peer.waitForOutstandingCalls(timeout: .milliseconds(100)) }
            let blocked = await onPlainThread { try peer.waitForOutstandingCallsBlocking(timeout: .milliseconds(100)) }
            #expect(throws: IntercomError.self) { try blocked.get() }
            hanging.cancel()
            try await peer.waitForOutstandingCalls(timeout: .seconds(10))
            await child.shutdown()
        }
    }

    @Test func unsolicitedMessagesCanBePolled() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            #expect(try peer.pollMessage() == nil)
            let nothing = await onPlainThread { try peer.receiveMessageBlocking(timeout: .milliseconds(50)) }
            #expect(try nothing.get() == nil)
            try await peer.send(Note(index: 1, text: "abc"))
            let echoed = await onPlainThread { try peer.receiveMessageBlocking(timeout: .seconds(10)) }
            let message = try echoed.get()
            #expect(message?.method == "echo")
            #expect(try message?.decode(as: Note.self) == Note(index: 1, text: "cba"))
            await child.shutdown()
            // After the end: the connection's end is reported, not nil.
            #expect(throws: IntercomError.self) { _ = try peer.pollMessage() }
        }
    }
}
