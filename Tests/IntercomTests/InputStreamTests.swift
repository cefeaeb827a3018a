import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import IntercomWire
import NIOCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Client-streaming and bidirectional calls against a real child process, over
/// every transport: items both ways, flow control of the caller's items (a
/// handler that stops reading suspends the caller's producer), stopping either
/// side, a typed error mid-input, the deadline over the whole call.
@Suite(.serialized) struct InputStreamTests {
    @Test(arguments: TransportKind.allCases)
    func itemsFlowFromTheCallerAndBothWays(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            // Client streaming: a thousand items, one answer.
            let sum = try await peer.clientStream("sum", 0, sending: Int.self, returning: Int.self) { numbers in
                for i in 0..<1000 { try await numbers.send(i) }
            }
            #expect(sum == 499_500)
            // No items at all: the handler's sequence ends at once.
            #expect(try await peer.clientStream("sum", 0, sending: Int.self, returning: Int.self) { _ in } == 0)
            // Bidirectional, in lockstep: each answer comes before the next item is sent.
            let lockstep = try await peer.bidirectionalStream("upper", 0, sending: String.self, receiving: String.self) {
                out, replies in
                var answers: [String] = []
                var iterator = replies.makeAsyncIterator()
                for word in ["one", "two", "three"] {
                    try await out.send(word)
                    answers.append(try #require(await iterator.next()))
                }
                try await out.finish()
                #expect(try await iterator.next() == nil, "finishing the input ends the handler and its stream")
                return answers
            }
            #expect(lockstep == ["ONE", "TWO", "THREE"])
            // Bidirectional with volume: 1 MB each way, four times both windows, sent
            // and read at once.
            let items = 2000
            let padding = String(repeating: "x", count: 500)
            let echoed = try await peer.bidirectionalStream(
                "echo.items", 0, sending: String.self, receiving: String.self, timeout: .seconds(120)
            ) { out, replies in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for i in 0..<items { try await out.send("\(i) \(padding)") }
                        try await out.finish()
                    }
                    var expected = 0
                    for try await reply in replies {
                        #expect(reply == "\(expected) \(padding)")
                        expected += 1
                    }
                    try await group.waitForAll()
                    return expected
                }
            }
            #expect(echoed == items)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func aHandlerThatStopsReadingSuspendsTheCallersProducer(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            let sent = Atomic<Int>(0)
            let total = 4000
            let upload = Task {
                try await peer.clientStream("input.held", 0, sending: String.self, returning: Int.self, timeout: .seconds(120)) {
                    items in
                    let padding = String(repeating: "x", count: 200)
                    for i in 0..<total {
                        try await items.send("\(i) \(padding)")
                        sent.store(i + 1, ordering: .relaxed)
                    }
                }
            }
            // The handler read one item and holds: the producer sends what the 256 KiB
            // window allows — items until their bytes reach 256 KiB, exactly — and waits.
            // (At first it waits for the handler to start: its window opens then.)
            #expect(await peer.waitForStatistics(timeout: .seconds(60)) { $0.streamsAwaitingCredit == 1 && sent.load(ordering: .relaxed) > 0 })
            let before = sent.load(ordering: .relaxed)
            #expect(before == (try Self.itemsFillingTheWindow { "\($0) \(String(repeating: "x", count: 200))" }))
            // Calls on the same connection go on meanwhile.
            #expect(try await peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            // Reading again grants credit: every item arrives.
            try await peer.call("input.release", 0)
            #expect(try await upload.value == total)
            #expect(peer.statistics.streamsAwaitingCredit == 0)
            await child.shutdown()
        }
    }

    /// How many items a producer sends before it waits: until their encoded bytes reach the initial window.
    static func itemsFillingTheWindow(_ item: (Int) -> String) throws -> Int {
        var bytes = 0
        var count = 0
        while bytes < 256 << 10 {
            var buffer = ByteBuffer()
            try BinaryEncoder().encode(item(count), into: &buffer)
            bytes += buffer.readableBytes
            count += 1
        }
        return count
    }

    @Test(arguments: TransportKind.allCases)
    func stoppingEitherSideEndsTheOther(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            // The handler answers before the items end: the producer is stopped, the answer returned.
            let producerStopped = Atomic<Bool>(false)
            let firstTen = try await peer.clientStream("sum.first", 10, sending: Int.self, returning: Int.self) { numbers in
                do {
                    var i = 0
                    while true {
                        try await numbers.send(i)
                        i += 1
                    }
                } catch {
                    producerStopped.store(true, ordering: .relaxed)
                    throw error
                }
            }
            #expect(firstTen == 45)
            let stopped = producerStopped.load(ordering: .relaxed)
            #expect(stopped)
            // The producer throws: the call is cancelled (the handler sees it) and its error comes out.
            struct ProducerGaveUp: Error {}
            await #expect(throws: ProducerGaveUp.self) {
                _ = try await peer.clientStream("sum", 0, sending: Int.self, returning: Int.self) { numbers in
                    for i in 0..<3 { try await numbers.send(i) }
                    throw ProducerGaveUp()
                }
            }
            #expect(try await peer.call("input.cancelled", 1, returning: Int.self) == 1)
            // The calling task is cancelled: the call fails with `cancelled`, the handler is cancelled.
            let (started, firstSent) = AsyncStream.makeStream(of: Void.self)
            let caller = Task {
                try await peer.clientStream("sum", 0, sending: Int.self, returning: Int.self, timeout: .seconds(60)) { numbers in
                    try await numbers.send(1)
                    firstSent.yield()
                    await untilCancelled()  // a producer with nothing more to say until the call is cancelled
                }
            }
            for await _ in started { break }
            caller.cancel()
            let cancelled = await #expect(throws: (any Error).self) { _ = try await caller.value }
            #expect(cancelled is CancellationError || (cancelled as? IntercomError)?.code == .cancelled, "\(String(describing: cancelled))")
            #expect(try await peer.call("input.cancelled", 2, returning: Int.self) == 2)
            // The handler fails mid-input: its typed error reaches the caller.
            do {
                _ = try await peer.clientStream("sum.failing", 3, sending: Int.self, returning: Int.self) { numbers in
                    for i in 0..<100 { try await numbers.send(i) }
                }
                Issue.record("expected the handler's error")
            } catch let error as HelperError {
                #expect(error == .refused(reason: "input", code: 3))
            }
            // A bidirectional body that returns early cancels the call and its handler.
            let first = try await peer.bidirectionalStream("upper", 0, sending: String.self, receiving: String.self) {
                out, replies in
                try await out.send("first")
                var iterator = replies.makeAsyncIterator()
                return try await iterator.next()
            }
            #expect(first == "FIRST")
            #expect(try await peer.call("input.cancelled", 3, returning: Int.self) == 3)
            // The deadline covers the whole call, producer included.
            let overdue = await expectIntercomError(.timeout) {
                _ = try await peer.clientStream("input.held", 0, sending: String.self, returning: Int.self, timeout: .milliseconds(300)) {
                    items in
                    while true { try await items.send("more") }
                }
            }
            #expect(overdue != nil)
            // A plain call to an input-streaming method is refused with a clear error.
            let plain = await expectIntercomError(.invalidPayload) { _ = try await peer.call("sum", 0, returning: Int.self) }
            #expect(plain?.message.contains("reads a stream of items") == true, "\(String(describing: plain))")
            try await peer.call("input.release", 0)  // let the overdue `input.held` handler's successor not wait
            await child.shutdown()
        }
    }
}

/// Callers that break the input-stream rules, on the raw wire: items beyond the
/// window close the connection; items for no running input are dropped; a peer
/// that predates input streams is never sent one.
@Suite struct HostileInputStreamTests {
    @Test func aCallerThatSendsBeyondItsCreditIsDisconnected() async throws {
        try await withResourceCheck {
            let sockets = try SocketPair()
            let raw = RawClient(fileDescriptor: sockets.second)
            defer { raw.close() }
            let router = Router()
            try router.registerClientStream("hold") { (_: Int, _: StreamItems<[UInt8]>, _: CallContext) -> Int in
                await untilCancelled()  // reads nothing until the connection ends and cancels it
                return 0
            }
            var configuration = Peer.Configuration(name: "callee")
            configuration.sharedMemory.isEnabled = false
            async let adopted = Peer.adopt(fileDescriptor: sockets.first, router: router, configuration: configuration)
            // An item for a call that is not running is dropped, not held; then the call.
            var opening = Self.hello(capabilities: Hello.streamsCapability | Hello.inputStreamsCapability)
            var stray = try Self.item(id: 99, bytes: 1024)
            opening.writeBuffer(&stray)
            let mark = FrameHeader.begin(into: &opening, kind: .call, flags: .inputStream, id: 1, method: "hold", timeout: .seconds(60))
            try BinaryEncoder().encode(0, into: &opening)
            FrameHeader.finish(mark, in: &opening)
            raw.write(opening)
            let callee = try await adopted
            // The handler started: the caller gets the initial window, no more.
            let frames = await onThread { raw.readFrames(2) }  // the callee's hello, then the grant
            let grant = try #require(frames.last)
            #expect(grant.kind == .credit && grant.id == 1 && grant.flags.contains(.inputStream))
            var count = grant.payload
            #expect(count.readInteger(endianness: .little, as: UInt32.self) == 256 << 10)
            // 1 MB against a 256 KiB window, in one write.
            var flood = ByteBuffer()
            for _ in 0..<10 {
                var item = try Self.item(id: 1, bytes: 100 << 10)
                flood.writeBuffer(&item)
            }
            raw.write(flood)
            let (rest, closed) = await onThread { raw.readUntilClosed() }
            #expect(closed)
            let error = try #require(rest.first { $0.kind == .error && $0.id == 0 })
            #expect(try ErrorBody(from: error.payload).message.contains("more items than it was granted"))
            await callee.waitUntilClosed()
        }
    }

    @Test func aPeerWithoutInputStreamsIsNeverSentOne() async throws {
        try await withResourceCheck {
            let sockets = try SocketPair()
            let raw = RawClient(fileDescriptor: sockets.second)
            defer { raw.close() }
            var configuration = Peer.Configuration(name: "caller")
            configuration.sharedMemory.isEnabled = false
            async let adopted = Peer.adopt(fileDescriptor: sockets.first, configuration: configuration)
            raw.write(Self.hello(capabilities: Hello.streamsCapability))  // streams, but not input streams
            let caller = try await adopted
            let refused = await expectIntercomError(.incompatiblePeer) {
                _ = try await caller.clientStream("sum", 0, sending: Int.self, returning: Int.self) { _ in }
            }
            #expect(refused?.message.contains("does not support input streams") == true)
            let bidirectional = await expectIntercomError(.incompatiblePeer) {
                try await caller.bidirectionalStream("upper", 0, sending: String.self, receiving: String.self) { _, _ in }
            }
            #expect(bidirectional != nil)
            await caller.close()
            // Nothing but the hello (and the goodbye) went out: no call was sent.
            let (frames, _) = await onThread { raw.readUntilClosed() }
            #expect(frames.map(\.kind) == [.hello, .goodbye])
        }
    }

    static func hello(capabilities: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        let mark = FrameHeader.begin(into: &buffer, kind: .hello, id: 0)
        Hello(maxFrameSize: 1 << 20, pid: UInt32(getpid()), capabilities: capabilities, name: "raw").write(into: &buffer)
        FrameHeader.finish(mark, in: &buffer)
        return buffer
    }

    /// An input item of call `id`: a byte array of `bytes` bytes.
    static func item(id: UInt64, bytes: Int) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        let mark = FrameHeader.begin(into: &buffer, kind: .streamItem, flags: .inputStream, id: id)
        try BinaryEncoder().encode([UInt8](repeating: 7, count: bytes), into: &buffer)
        FrameHeader.finish(mark, in: &buffer)
        return buffer
    }
}

/// Suspends until the calling task is cancelled (no timer: an event, not a sleep).
private func untilCancelled() async {
    let (never, continuation) = AsyncStream.makeStream(of: Never.self)
    await withTaskCancellationHandler {
        for await _ in never {}
    } onCancel: {
        continuation.finish()
    }
}
