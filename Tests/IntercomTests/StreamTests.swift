import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing
import IntercomWire
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Per-call streams against a real child process, over every transport: items
/// in order, flow control (a consumer that stops reading suspends the producer
/// and holds at most the initial credit), cancellation both ways, a typed
/// error mid-stream, the call's deadline over the whole stream, and calls
/// beside a stalled stream.
@Suite(.serialized) struct StreamTests {
    @Test(arguments: TransportKind.allCases)
    func itemsArriveInOrderAndTheStreamEnds(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            var items: [Int] = []
            for try await item in child.peer.stream("count", 1000, of: Int.self) { items.append(item) }
            #expect(items == Array(0..<1000))
            // Sent in batches (`send(contentsOf:)`), 1.4 MB crossing the window many times: the same, in order.
            var batched = 0
            for try await item in child.peer.stream("count.batched", 20_000, of: String.self) {
                #expect(item.hasPrefix("item \(batched) "))
                batched += 1
            }
            #expect(batched == 20_000)
            // Raw byte chunks (written and read by their own fast paths), from an array
            // and from a sequence without contiguous storage, around the 64 KiB batch.
            let sizes = [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] + Array(repeating: 64, count: 3000) + [200_000]
            var chunks: [[UInt8]] = []
            for try await chunk in child.peer.stream("chunks.batched", sizes, of: [UInt8].self) { chunks.append(chunk) }
            let expected = sizes.enumerated().map { [UInt8](repeating: UInt8(truncatingIfNeeded: $0.offset), count: $0.element) }
            #expect(chunks.count == 2 * sizes.count)
            #expect(chunks == expected + expected)
            // An empty stream ends at once.
            var none = child.peer.stream("count", 0, of: Int.self).makeAsyncIterator()
            #expect(try await none.next() == nil)
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func aConsumerThatStopsReadingSuspendsTheProducerAndOtherCallsGoOn(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            var items = child.peer.stream("count.forever", 0, of: [Int].self, timeout: .seconds(60)).makeAsyncIterator()
            #expect(try await items.next()?.first == 0)
            // Not reading: the producer sent what its initial window allows (256 KiB of
            // items of 128 to 384 bytes) and waits.
            let sent = try await child.peer.call("streams.blocked", 0, returning: Int.self)
            #expect(sent > 600 && sent <= 2049, "\(sent) items sent before the producer waited")
            // No head-of-line blocking: calls on the same connection are answered meanwhile.
            #expect(try await child.peer.call("math.add", AddRequest(a: 2, b: 3), returning: Int.self) == 5)
            // Reading again grants credit, and the items go on where they stopped.
            for expected in 1..<(sent + 200) { #expect(try await items.next()?.first == expected) }
            await child.shutdown()
        }
    }

    @Test(arguments: TransportKind.allCases)
    func stoppingEitherSideEndsTheOther(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            // The consumer leaves the loop: the producer's handler is cancelled.
            for try await item in child.peer.stream("count.forever", 0, of: [Int].self, timeout: .seconds(60)) {
                if item.first == 5 { break }
            }
            #expect(try await child.peer.call("streams.cancelled", 1, returning: Int.self) == 1)
            // The consuming task is cancelled: iteration ends with `cancelled`, the producer stops.
            let (started, itemArrived) = AsyncStream.makeStream(of: Void.self)
            let consumer = Task {
                var count = 0
                for try await _ in child.peer.stream("count.forever", 0, of: [Int].self, timeout: .seconds(60)) {
                    count += 1
                    itemArrived.yield()
                }
                return count
            }
            for await _ in started { break }  // the stream runs
            consumer.cancel()
            let ended = await #expect(throws: IntercomError.self) { _ = try await consumer.value }
            #expect(ended?.code == .cancelled, "\(String(describing: ended))")
            #expect(try await child.peer.call("streams.cancelled", 2, returning: Int.self) == 2)
            // The producer fails mid-stream: the items so far, then its typed error.
            var received: [Int] = []
            do {
                for try await item in child.peer.stream("count.failing", 3, of: Int.self) { received.append(item) }
                Issue.record("expected the producer's error")
            } catch let error as HelperError {
                #expect(error == .refused(reason: "midstream", code: 7))
            }
            #expect(received == [0, 1, 2])
            // The call's deadline covers the whole stream, however fast the items come.
            let overdue = await expectIntercomError(.timeout) {
                for try await _ in child.peer.stream("count.forever", 0, of: [Int].self, timeout: .milliseconds(300)) {}
            }
            #expect(overdue != nil)
            #expect(try await child.peer.call("streams.cancelled", 3, returning: Int.self) == 3)
            await child.shutdown()
        }
    }
}

/// A producer that ignores flow control: the consumer holds at most the initial
/// window (and the item that crossed it), then closes the connection as a
/// protocol violation.
@Suite struct HostileStreamTests {
    @Test func aProducerThatSendsBeyondItsCreditIsDisconnected() async throws {
        try await withResourceCheck {
            let sockets = try SocketPair()
            let raw = sockets.second
            var configuration = Peer.Configuration(name: "consumer")
            configuration.sharedMemory.isEnabled = false
            async let adopted = Peer.adopt(fileDescriptor: sockets.first, configuration: configuration)
            // The hostile side: a hello that offers streams, then whatever it likes.
            var hello = ByteBuffer()
            let mark = FrameHeader.begin(into: &hello, kind: .hello, id: 0)
            Hello(maxFrameSize: 1 << 20, pid: UInt32(getpid()), capabilities: Hello.streamsCapability, name: "hostile")
                .write(into: &hello)
            FrameHeader.finish(mark, in: &hello)
            let helloBytes = Array(hello.readableBytesView)
            _ = await onThread { writeAll(raw, helloBytes) }
            let consumer = try await adopted
            // The call starts with the iterator; nothing is read from it until the flood is in.
            var items = consumer.stream("flood", 0, of: [UInt8].self, timeout: .seconds(30)).makeAsyncIterator()
            // Read the consumer's hello and its streaming call, then flood the stream.
            let call = try #require(await onThread { () -> Frame? in
                var buffer = ByteBuffer()
                var chunk = [UInt8](repeating: 0, count: 4096)
                while true {
                    while let frame = try? FrameDecoder().next(from: &buffer) {
                        if frame.kind == .call { return frame }
                    }
                    let n = chunk.withUnsafeMutableBytes { read(raw, $0.baseAddress, $0.count) }
                    if n <= 0 { return nil }
                    buffer.writeBytes(chunk[0..<n])
                }
            })
            #expect(call.flags.contains(.stream))
            var flood = ByteBuffer()
            for _ in 0..<10 {  // 1 MB against a 256 KiB window
                let mark = FrameHeader.begin(into: &flood, kind: .streamItem, id: call.id)
                try BinaryEncoder().encode([UInt8](repeating: 7, count: 100 << 10), into: &flood)
                FrameHeader.finish(mark, in: &flood)
            }
            let floodBytes = Array(flood.readableBytesView)
            _ = await onThread { writeAll(raw, floodBytes) }
            await consumer.waitUntilClosed()
            var received = 0
            var error: IntercomError?
            do {
                while try await items.next() != nil { received += 1 }
            } catch let caught as IntercomError {
                error = caught
            }
            // Items of 100 KiB start at 0, 100 and 200 KiB: the fourth starts past the window.
            #expect(received == 3, "the consumer held \(received) items")
            #expect(error?.code == .protocolViolation, "\(String(describing: error))")
            #expect(error?.message.contains("more items than it was granted") == true, "\(String(describing: error))")
            close(raw)
        }
    }
}

private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent <= 0 { return false }
        offset += sent
    }
    return true
}
