import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
@_spi(IntercomInternals) import IntercomTransport
import IntercomWire
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Descriptors inside values, against a real child process: in a reply, a
/// call's argument, a one-way message and stream items, over a socket pair
/// and a Unix socket, each kept on its socket or moved to shared memory; refused before anything is
/// sent where they cannot travel; never leaked on either side, whether the
/// receiver takes them, ignores them or fails to decode them.
@Suite(.serialized) struct DescriptorTests {
    @Test(arguments: [TransportKind.socketpair, .unix, .sharedMemory, .sharedMemoryOverUnix])
    func descriptorsTravelInEveryKindOfValue(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            #expect(peer.passesDescriptors)
            // Warm up first: a connection kept on its socket opens one descriptor of its
            // own once a handler sends from another thread (the direct-write duplicate of
            // its socket, NIOFrameTransport+DirectWrite), and that is not a leak.
            for try await item in peer.stream("fd.pipes", 1, of: TextAndFile.self) { close(item.file.take()) }
            let childDescriptors = try await peer.call("fd.count", 0, returning: Int.self)
            // A reply: the helper hands over a pipe it filled.
            let reply = try await peer.call("fd.pipe", "from the reply", returning: TextAndFile.self)
            #expect(readAll(reply.file.take()) == "from the reply")
            // A call's argument: the helper writes into the pipe this side made.
            let (readEnd, writeEnd) = try makePipe()
            let written = try await peer.call(
                "fd.write", TextAndFile(text: "from the argument", file: UnixDescriptor(taking: writeEnd)), returning: Int.self)
            #expect(written == 17)
            #expect(readAll(readEnd) == "from the argument", "EOF too: the helper closed its copy and this side sent a duplicate it closed")
            // A one-way message.
            let (noteRead, noteWrite) = try makePipe()
            let note = try UnixDescriptor(duplicating: noteWrite)
            close(noteWrite)
            try await peer.send("fd.note", TextAndFile(text: "from a message", file: note))
            #expect(note.rawValue >= 0, "sending a value does not take its descriptor: it can be sent again")
            close(note.take())  // this side's copy of the write end: the pipe ends when the helper closes its own
            #expect(readAll(noteRead) == "from a message")
            // Stream items, each with its own.
            var items: [String] = []
            for try await item in peer.stream("fd.pipes", 3, of: TextAndFile.self) { items.append(readAll(item.file.take())) }
            #expect(items == ["item 0", "item 1", "item 2"])
            // A batch cannot carry them: the error says what to do instead.
            let batched = await expectIntercomError(.invalidPayload) {
                for try await _ in peer.stream("fd.pipes.batched", 0, of: TextAndFile.self) {}
            }
            #expect(batched?.message.contains("one by one with send(_:)") == true, "\(String(describing: batched))")
            // The helper holds no more descriptors than before.
            let after = try await peer.call("fd.count", 0, returning: Int.self)
            #expect(after == childDescriptors)
            await child.shutdown()
        }
    }

    @Test func descriptorsNobodyTakesAreClosed() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.sharedMemory)
            let peer = child.peer
            // A reply that does not decode: a clear error, and its descriptor closed with the frame.
            for _ in 0..<50 {
                let wrong = await expectIntercomError(.invalidPayload) { _ = try await peer.call("fd.pipe", "x", returning: [Int].self) }
                #expect(wrong != nil)
            }
            // A received value dropped without `take()` closes its descriptor.
            for _ in 0..<50 { _ = try await peer.call("fd.pipe", "dropped", returning: TextAndFile.self) }
            // A value with more than the per-frame limit is refused before anything is sent.
            let files = try (0...UnixDescriptor.maxPerFrame).map { _ in try UnixDescriptor(duplicating: 0) }
            let before = peer.traffic.framesSent
            let tooMany = await expectIntercomError(.invalidPayload) {
                _ = try await peer.call("fd.many", ManyFiles(files: files), returning: Int.self)
            }
            #expect(tooMany?.message.contains("at most 16 descriptors") == true, "\(String(describing: tooMany))")
            #expect(peer.traffic.framesSent == before)
            #expect(try await peer.call("fd.many", ManyFiles(files: Array(files.prefix(16))), returning: Int.self) == 16)
            // A stream left early: the items that arrived and were never read are closed with it.
            for try await item in peer.stream("fd.pipes", 200, of: TextAndFile.self) {
                #expect(item.text == "item 0")
                break
            }
            #expect(try await peer.call("fd.count", 0, returning: Int.self) > 0)  // the connection carries on
            // The other side dies with descriptors in flight both ways: nothing stays open here.
            let (readEnd, writeEnd) = try makePipe()
            defer { close(readEnd) }
            let shared = UnixDescriptor(taking: writeEnd)
            for _ in 0..<20 { try await peer.send("fd.note", TextAndFile(text: "late", file: shared)) }
            let stream = Task { try await peer.stream("fd.pipes", 10_000, of: TextAndFile.self).reduce(0) { n, _ in n + 1 } }
            child.kill()
            _ = await child.waitForExit()
            _ = try? await stream.value
            await peer.waitUntilClosed()
            await child.shutdown()
        }
    }

    /// TCP and TLS cannot pass descriptors: the call fails before anything is
    /// written, and the connection carries on.
    @Test(arguments: [TransportKind.tcp, .tls])
    func whereDescriptorsCannotTravelTheyAreRefusedBeforeAnythingIsSent(kind: TransportKind) async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(kind)
            let peer = child.peer
            #expect(!peer.passesDescriptors)
            let (readEnd, writeEnd) = try makePipe()
            defer { close(readEnd) }
            let before = peer.traffic.framesSent
            let refused = await expectIntercomError(.invalidPayload) {
                _ = try await peer.call("fd.write", TextAndFile(text: "x", file: UnixDescriptor(taking: writeEnd)), returning: Int.self)
            }
            #expect(refused?.message.contains("cannot travel on this connection") == true, "\(String(describing: refused))")
            #expect(peer.traffic.framesSent == before, "nothing was written")
            let message = await expectIntercomError(.invalidPayload) {
                try await peer.send("fd.note", TextAndFile(text: "x", file: try UnixDescriptor(duplicating: readEnd)))
            }
            #expect(message != nil)
            #expect(try await peer.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self) == 3)
            await child.shutdown()
        }
    }
}

private func makePipe() throws -> (read: Int32, write: Int32) {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw IntercomError(.invalidConfiguration, "pipe failed: \(errno)") }
    return (ends[0], ends[1])
}

/// Reads `fd` to its end and closes it.
private func readAll(_ fd: Int32) -> String {
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The descriptor channel on its own, fed by a hostile sender: a flagged frame
/// whose descriptors never came, a count that does not match, more than the
/// limit — each a protocol violation that leaves nothing open.
@Suite struct DescriptorChannelTests {
    /// On the wire a descriptor is its index among the frame's (docs/PROTOCOL.md,
    /// "Descriptors"; the conformance vector's payload `00`).
    @Test func aDescriptorEncodesAsItsIndexAmongTheFramesDescriptors() throws {
        let first = try UnixDescriptor(duplicating: 0)
        let second = try UnixDescriptor(duplicating: 0)
        let outgoing = OutgoingDescriptors()
        var buffer = ByteBuffer()
        try DescriptorAttachments.$outgoing.withValue(outgoing) { try BinaryEncoder().encode([first, second], into: &buffer) }
        #expect(Array(buffer.readableBytesView) == [2, 0, 1])
        #expect(outgoing.descriptors == [first.rawValue, second.rawValue])
        // Without a frame to travel beside, encoding refuses.
        #expect(throws: DescriptorError.self) { try BinaryEncoder().encode(first, into: &buffer) }
    }

    @Test func aChannelRefusesWhatDoesNotMatchAndLeaksNothing() async throws {
        try await withResourceCheck {
            let forward = try #require(DescriptorChannel.makePair())
            let backward = try #require(DescriptorChannel.makePair())
            let sender = DescriptorChannel(sending: forward.keep, receiving: backward.give)
            let receiver = DescriptorChannel(sending: backward.keep, receiving: forward.give)
            #expect(DescriptorChannel.isSeqPacketSocket(forward.keep))
            #expect(!DescriptorChannel.isSeqPacketSocket(0))
            // Nothing was sent for the frame.
            #expect(throws: ProtocolError.self) { _ = try receiver.receive() }
            // In order, as many as were sent.
            try sender.send([0, 1])
            try sender.send([2])
            #expect(try receiver.receive().count == 2)
            #expect(try receiver.receive().count == 1)
            // A message that claims more than it carries.
            var claim = UInt32(3).littleEndian
            let sent = withUnsafeBytes(of: &claim) { raw in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)
                var message = msghdr()
                return withUnsafeMutablePointer(to: &iov) { iov in
                    message.msg_iov = iov
                    message.msg_iovlen = 1
                    return sendmsg(forward.keep, &message, 0)
                }
            }
            #expect(sent == 4)
            #expect(throws: ProtocolError.self) { _ = try receiver.receive() }
            // More than a frame may carry: the extra ones are closed by the kernel, the rest here.
            try sender.send(Array(repeating: 0, count: UnixDescriptor.maxPerFrame + 1))
            #expect(throws: ProtocolError.self) { _ = try receiver.receive() }
        }
    }
}
