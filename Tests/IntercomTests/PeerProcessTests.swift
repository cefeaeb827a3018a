import Foundation
import Intercom
import IntercomTestSupport
import IntercomTestHelper
import Synchronization
import Testing

@_spi(IntercomInternals) import IntercomTransport

#if canImport(Glibc)
import Glibc
#endif

@discardableResult
func expectIntercomError(
    _ code: IntercomError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async -> IntercomError? {
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
    } catch let error as IntercomError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected IntercomError \(code), got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Every point of the core issue against a real child process, over a socket
/// pair and over a Unix socket. Serialized so the descriptor audit is exact.
@Suite(.serialized) struct PeerProcessTests {
    @Test(arguments: TransportKind.allCases)
    func typedCallsReachTheChild(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let ack = try await child.peer.call(
                "camera.exposure.set", SetExposure(ms: 10), returning: Ack.self, timeout: .seconds(1))
            #expect(ack == Ack(ok: true, appliedMs: 10))
            #expect(try await child.peer.call("math.add", AddRequest(a: 40, b: 2), returning: Int.self) == 42)
            let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            #expect(try await child.peer.call("echo.bytes", bytes, returning: [UInt8].self) == bytes)
            #expect(try await child.peer.call("peer.pid", 0, returning: Int.self) == Int(child.pid))
            #expect(child.peer.remote.reportedPID == child.pid)
            #expect(child.peer.remote.name == "test-helper")
            _ = try await child.peer.ping()
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func unknownMethodAndBadPayloadKeepTheConnection(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let unknown = await expectIntercomError(.unknownMethod) {
                _ = try await child.peer.call("no.such.method", 1, returning: Int.self)
            }
            #expect(unknown?.message.contains("no.such.method") == true)
            #expect(unknown?.message.contains("in all)") == true, "says how many it handles: \(String(describing: unknown))")
            // A typo: the method meant comes first among those it lists.
            let typo = await expectIntercomError(.unknownMethod) { _ = try await child.peer.call("math.ad", 1, returning: Int.self) }
            #expect(typo?.message.contains("it handles: math.add,") == true, "\(String(describing: typo))")
            let invalid = await expectIntercomError(.invalidPayload) {
                _ = try await child.peer.call("math.add", "not numbers", returning: Int.self)
            }
            #expect(invalid?.message.contains("AddRequest") == true, "\(String(describing: invalid))")
            let badReply = await expectIntercomError(.invalidPayload) {
                _ = try await child.peer.call("math.add", AddRequest(a: 1, b: 1), returning: Note.self)
            }
            #expect(badReply?.message.contains("Note") == true)
            #expect(try await child.peer.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self) == 3)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func handlerErrorsReachTheCaller(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            do {
                _ = try await child.peer.call("fail.typed", "no film", returning: Int.self)
                Issue.record("expected HelperError")
            } catch let error as HelperError {
                #expect(error == .refused(reason: "no film", code: 42))
            }
            let plain = await expectIntercomError(.remote) {
                _ = try await child.peer.call("fail.plain", "lens cap on", returning: Int.self)
            }
            #expect(plain?.remoteType == "IntercomTestHelper.PlainError")
            #expect(plain?.message == "plain failure: lens cap on")
            #expect(plain?.context.method == "fail.plain")
            // Without the type registered, a Codable error still arrives with its name.
            let unregistered = try await ChildProcess.spawn(kind, configuration: Peer.Configuration(name: "bare"))
            let error = await expectIntercomError(.remote) {
                _ = try await unregistered.peer.call("fail.typed", "x", returning: Int.self)
            }
            #expect(error?.remoteType == "IntercomTestHelper.HelperError")
            #expect(error?.message.contains("refused") == true)
            await unregistered.shutdown()
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func manyCallsInFlightInBothDirections(kind: TransportKind) async throws {
        try await withResourceCheck {
            let router = Router()
            // The parent answers the child's calls through a fallback handler.
            try router.setFallback { call in
                guard call.method == "parent.double" else {
                    throw IntercomError(.unknownMethod, "parent handles only parent.double")
                }
                let value: Int = try call.decode()
                return value * 2
            }
            let child = try await ChildProcess.spawn(kind, router: router)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<300 {
                    group.addTask {
                        if i % 2 == 0 {
                            let sum = try await child.peer.call("math.add", AddRequest(a: i, b: 1), returning: Int.self)
                            #expect(sum == i + 1)
                        } else {
                            // child → parent call nested inside parent → child call
                            let result = try await child.peer.call("callback.double", i, returning: Int.self)
                            #expect(result == i * 2 + 1)
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(child.peer.statistics.pendingCalls == 0)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func handlerConcurrencyLimit(kind: TransportKind) async throws {
        try await withResourceCheck {
            for (limit, expectSerial) in [(1, true), (8, false)] {
                let child = try await ChildProcess.spawn(kind, arguments: ["--concurrency", "\(limit)"])
                let peaks = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<8 {
                        group.addTask { try await child.peer.call("probe.concurrency", 20, returning: Int.self) }
                    }
                    return try await group.reduce(into: [Int]()) { $0.append($1) }
                }
                if expectSerial {
                    #expect(peaks.max() == 1, "limit 1 must run handlers one at a time: \(peaks)")
                } else {
                    #expect(peaks.max()! > 1, "limit 8 must let handlers overlap: \(peaks)")
                    #expect(peaks.max()! <= 8)
                }
                await child.shutdown()
            }
        }
    }

    @Test(arguments: TransportKind.allCases)
    func deadlinePassesTheHandlerIsCancelled(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let start = ContinuousClock.now
            let error = await expectIntercomError(.timeout) {
                _ = try await child.peer.call("work.slow", 0, returning: Int.self, timeout: .milliseconds(300))
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(error?.context.method == "work.slow")
            #expect(try await child.peer.receiveMessage(timeout: .seconds(10)).method == "work.started")
            let report = try await child.peer.receive(as: CancelReport.self, timeout: .seconds(10))
            #expect(report.budgetMs > 0 && report.budgetMs <= 300, "the handler knew its budget: \(report)")
            #expect(report.callID == error?.context.callID)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func cancellingTheCallerCancelsTheHandler(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let call = Task { try await peer.call("work.slow", 0, returning: Int.self, timeout: .seconds(60)) }
            #expect(try await peer.receiveMessage(timeout: .seconds(10)).method == "work.started")
            call.cancel()
            let result = await call.result
            #expect(throws: IntercomError.self) { try result.get() }
            if case .failure(let error as IntercomError) = result { #expect(error.code == .cancelled) }
            let report = try await peer.receive(as: CancelReport.self, timeout: .seconds(10))
            #expect(report.budgetMs > 50_000, "cancelled by the cancel frame, long before its deadline")
            // A late reply is dropped and the connection goes on.
            #expect(try await peer.call("math.add", AddRequest(a: 2, b: 2), returning: Int.self) == 4)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func killingTheChildFailsEveryPendingCallAtOnce(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let failures = Locked<[(IntercomError.Code, ContinuousClock.Instant)]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<10 {
                    group.addTask {
                        do {
                            _ = try await peer.call("hang", 0, returning: Int.self, timeout: .seconds(60))
                        } catch let error as IntercomError {
                            failures.withLock { $0.append((error.code, .now)) }
                        }
                    }
                }
                for _ in 0..<10 {
                    #expect(try await peer.receiveMessage(timeout: .seconds(10)).method == "hang.started")
                }
                #expect(peer.statistics.pendingCalls == 10)
                let killed = ContinuousClock.now
                child.kill(SIGKILL)
                try await group.waitForAll()
                let results = failures.withLock { $0 }
                #expect(results.count == 10)
                #expect(results.allSatisfy { $0.0 == .peerLost }, "\(results.map(\.0))")
                let slowest = results.map { $0.1 - killed }.max() ?? .zero
                #expect(slowest < .milliseconds(100), "all pending calls failed \(slowest) after the kill")
            }
            let status = await child.waitForExit()
            #expect(status == SIGKILL)
            await expectIntercomError(.peerLost) { _ = try await peer.call("math.add", AddRequest(a: 1, b: 1), returning: Int.self) }
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func messageChannelDeliversEverythingThenEnds(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            for i in 0..<50 { try await peer.send(Note(index: i, text: "hello \(i)")) }
            var echoes = 0
            for try await note in peer.messages(as: Note.self) {
                #expect(note == Note(index: echoes, text: String("hello \(echoes)".reversed())))
                echoes += 1
                if echoes == 50 { break }
            }
            await expectIntercomError(.timeout) { _ = try await peer.receive(as: Note.self, timeout: .milliseconds(50)) }
            // The child sends 100 notes and exits: all 100 arrive, then receiving ends with peerLost.
            try await peer.send("burst.then.exit", 100)
            var burst: [Int] = []
            do {
                for try await note in peer.messages(as: Note.self) { burst.append(note.index) }
                Issue.record("the sequence must end by throwing")
            } catch {
                #expect((error as? IntercomError)?.code == .peerLost, "\(error)")
            }
            #expect(burst == Array(0..<100))
            await expectIntercomError(.peerLost) { _ = try await peer.receive(as: Note.self, timeout: .seconds(1)) }
            #expect(await child.waitForExit() == 0)
            await child.shutdown()
        }
    }

    /// Senders on several threads at once — on the pool, where an idle socket is
    /// written straight from the sender's thread, and on the connection's own
    /// thread, which batches — never reorder one sender's messages, and calls
    /// made meanwhile get their own replies.
    @Test(arguments: TransportKind.allCases)
    func concurrentSendersKeepEachSendersOrder(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let senders = 5
            let perSender = 1500
            let echoes = Task {
                var next = [Int](repeating: 0, count: senders)
                var received = 0
                while received < senders * perSender {
                    for message in try await peer.receiveMessages(timeout: .seconds(60)) {
                        let note = try message.decode(as: Note.self)
                        let (sender, index) = note.index.quotientAndRemainder(dividingBy: 1_000_000)
                        #expect(index == next[sender], "sender \(sender): \(index) after \(next[sender] - 1)")
                        next[sender] = index + 1
                        received += 1
                    }
                }
                return next
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for sender in 0..<senders {
                    // Sender 0 on the connection's own thread, the others on the pool.
                    group.addTask(executorPreference: sender == 0 ? peer.executor : nil) {
                        for index in 0..<perSender {
                            try await peer.send(Note(index: sender * 1_000_000 + index, text: "n"))
                            if index % 100 == 0 {
                                #expect(try await peer.call("math.add", AddRequest(a: sender, b: index), returning: Int.self) == sender + index)
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(try await echoes.value == [Int](repeating: perSender, count: senders))
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func batchesArriveAsSeparateMessagesInOrder(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            // 6,000 notes of ~300 B: more than the 1 MiB ring and the socket buffers,
            // so the batch path must also wait for room.
            let total = 6000
            let text = String(repeating: "abc", count: 100)
            let notes = (0..<total).map { Note(index: $0, text: "\($0) \(text)") }
            let echoes = Task {
                // Taken one at a time, a few at a time and in whole batches in turn,
                // so batches queued in the inbox are split at every point.
                var echoed: [Note] = []
                var round = 0
                while echoed.count < total + 1 {
                    round += 1
                    switch round % 3 {
                    case 0:
                        echoed.append(try await peer.receive(as: Note.self, timeout: .seconds(60)))
                    case 1:
                        let few = try await peer.receiveMessages(limit: 7, timeout: .seconds(60))
                        #expect((1...7).contains(few.count))
                        echoed += try few.map { try $0.decode(as: Note.self) }
                    default:
                        let many = try await peer.receiveMessages(timeout: .seconds(60))
                        #expect((1...Peer.defaultReceiveLimit).contains(many.count))
                        echoed += try many.map { try $0.decode(as: Note.self) }
                    }
                }
                return echoed
            }
            try await peer.send(contentsOf: notes[0..<2500])
            try await peer.send(notes[2500])  // one by one in between: order is kept
            // A sequence without contiguous storage takes the iterating path.
            try await peer.send(contentsOf: notes[2501..<2600].lazy.map { $0 })
            try await peer.send(contentsOf: notes[2600...])
            // A batch with one message that does not encode sends nothing at all.
            let broken = [FailingNote(note: Note(index: -2, text: "never"), fails: false), FailingNote(note: notes[0], fails: true)]
            await expectIntercomError(.invalidPayload) { try await peer.send(contentsOf: broken) }
            try await peer.send(contentsOf: [Note(index: -1, text: "last")])
            let echoed = try await echoes.value
            #expect(echoed.count == total + 1)
            #expect(echoed.map(\.index) == Array(0..<total) + [-1], "in order, each its own message, nothing of the broken batch")
            #expect(echoed.first?.text == String(notes[0].text.reversed()))
            #expect(echoed.last == Note(index: -1, text: "tsal"))
            await child.shutdown()
        }
    }

    /// Also from a task on the connection's own thread: there the outbox is never
    /// drained while the sender runs, and it used to take all 32 MiB (and, in
    /// `intercom bench` S2, half a gigabyte) before writing a byte.
    @Test(arguments: TransportKind.allCases, [false, true])
    func senderSuspendsWhenThePeerDoesNotRead(kind: TransportKind, onConnectionThread: Bool) async throws {
        try await withResourceCheck {
            let configuration = ChildProcess.configuration {
                $0.outboundHighWatermark = 64 << 10
                $0.outboundLowWatermark = 16 << 10
            }
            let child = try await ChildProcess.spawn(kind, arguments: ["--stall"], configuration: configuration)
            let peer = child.peer
            let sent = Locked(0)
            let total = 2000
            let text = String(repeating: "x", count: 16 << 10)  // 2000 × 16 KiB = 32 MiB
            let sender = Task(executorPreference: onConnectionThread ? peer.executor : nil) {
                for i in 0..<total {
                    try await peer.send(Note(index: i, text: text))
                    sent.withLock { $0 += 1 }
                }
            }
            try #require(await peer.waitForStatistics(timeout: .seconds(10)) { $0.blockedSenders == 1 }, "the sender is suspended")
            let sentWhenBlocked = sent.withLock { $0 }
            #expect(sentWhenBlocked < total, "the sender must stop before everything is buffered")
            // Memory stays bounded: what was accepted fits in socket buffers, the child's
            // bounded inbox and our 64 KiB watermark — far less than the 32 MiB offered.
            #expect(sentWhenBlocked * (16 << 10) < 16 << 20, "accepted \(sentWhenBlocked) notes before blocking")
            child.kill(SIGUSR1)  // the child starts reading
            try await sender.value
            try await peer.send(Note(index: -1, text: "count?"))
            var count = 0
            while true {
                let message = try await peer.receiveMessage(timeout: .seconds(30))
                if message.method == "count" {
                    count = try message.decode(as: Int.self)
                    break
                }
            }
            #expect(count == total + 1, "nothing was lost")
            await child.shutdown()
        }
    }

    @Test func standardInputAndOutputCarryAConnection() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair, arguments: ["--stdio"])
            #expect(try await child.peer.call("math.add", AddRequest(a: 5, b: 6), returning: Int.self) == 11)
            await child.shutdown()
        }
    }
}

/// Encodes as a ``Note`` unless told to fail.
struct FailingNote: Encodable {
    struct Refused: Error {}
    let note: Note
    let fails: Bool

    func encode(to encoder: any Encoder) throws {
        if self.fails { throw Refused() }
        try self.note.encode(to: encoder)
    }
}
