#if os(Linux)
import Foundation
import Intercom
import IntercomTestSupport
import IntercomWire
import NIOCore
import Testing
import Glibc
// timespec's fields are attributed to whichever module saw its header first; with
// NIOPosix linked that is CoreFoundation (MemberImportVisibility).
import CoreFoundation

/// The shared-memory ring under the coming shared-memory transport (issue #6):
/// records across two mappings and across processes, a full ring, waiting on
/// the futex, and a hostile writer. Every test runs under the resource audit:
/// besides checking itself, that keeps its memfds from being open while an
/// audited test in another suite takes stock of the process's descriptors.
@Suite(.serialized) struct SharedMemoryRingTests {
    /// Deterministic record contents: index `i` has length `i % 301` and bytes derived from `i`.
    static func record(_ index: Int) -> [UInt8] {
        (0..<(index % 301)).map { UInt8(truncatingIfNeeded: index &* 31 &+ $0) }
    }

    @Test func recordsCrossTwoMappingsInOrderWithWraparound() async throws {
        try await withResourceCheck {
            let capacity = 4096
            let size = SharedMemoryRing.size(capacity: capacity)
            let writerRegion = try SharedMemoryRegion(creating: size)
            let readerRegion = try SharedMemoryRegion(mapping: dup(writerRegion.fd), size: size)
            let ring = SharedMemoryRing.create(at: writerRegion.base, capacity: capacity)
            let readerRing = try SharedMemoryRing.open(at: readerRegion.base, size: size)
            let count = 50_000
            async let written: Void = onThread {
                var state = SharedMemoryRing.WriterState()
                for index in 0..<count { try ring.write(Self.record(index), state: &state) }
            }
            let mismatches: Int = try await onThread {
                var state = SharedMemoryRing.ReaderState()
                let deadline = ContinuousClock.now + .seconds(60)
                var mismatches = 0
                for index in 0..<count {
                    let record = try readerRing.read(state: &state, until: deadline)
                    if record != Self.record(index) { mismatches += 1 }
                }
                return mismatches
            }
            try await written
            #expect(mismatches == 0)
        }
    }

    @Test func aFullRingRefusesUntilTheReaderFreesRoom() async throws {
        try await withResourceCheck {
            let size = SharedMemoryRing.size(capacity: 256)
            let region = try SharedMemoryRegion(creating: size)
            let ring = SharedMemoryRing.create(at: region.base, capacity: 256)
            var writer = SharedMemoryRing.WriterState()
            var reader = SharedMemoryRing.ReaderState()
            let bytes = [UInt8](repeating: 7, count: 60)  // 64 bytes a record: four fit
            var accepted = 0
            while try bytes.withUnsafeBytes({ try ring.tryWrite($0, state: &writer) }) { accepted += 1 }
            #expect(accepted == 4)
            #expect(try ring.tryRead(state: &reader) == bytes)
            #expect(try bytes.withUnsafeBytes { try ring.tryWrite($0, state: &writer) })
            for _ in 0..<4 { #expect(try ring.tryRead(state: &reader) == bytes) }
            #expect(try ring.tryRead(state: &reader) == nil)
        }
    }

    /// An idle reader sleeps on the futex instead of spinning: the thread uses
    /// almost no CPU while it waits 300 ms for data that never comes.
    @Test func anIdleReaderSleepsOnTheFutex() async throws {
        try await withResourceCheck {
            let size = SharedMemoryRing.size(capacity: 4096)
            let region = try SharedMemoryRegion(creating: size)
            let ring = SharedMemoryRing.create(at: region.base, capacity: 4096)
            let (wall, cpu) = await onThread { () -> (Duration, Duration) in
                let start = ContinuousClock.now
                let cpuStart = threadCPUTime()
                ring.waitForData(state: SharedMemoryRing.ReaderState(), spins: 1000, timeout: .milliseconds(300))
                return (ContinuousClock.now - start, threadCPUTime() - cpuStart)
            }
            #expect(wall >= .milliseconds(250), "it waited for the timeout: \(wall)")
            #expect(cpu < .milliseconds(30), "and slept rather than spun: \(cpu) of CPU")
        }
    }

    /// A writer that corrupts the ring (random bytes over the head and the data
    /// while records flow): the reader only ever gets records or typed errors.
    @Test func aHostileWriterCausesTypedErrorsOnlyNeverACrashOrAHang() async throws {
        try await withResourceCheck {
            var errors = 0
            var records = 0
            for seed in 0..<200 {
                let size = SharedMemoryRing.size(capacity: 1024)
                let region = try SharedMemoryRegion(creating: size)
                let ring = SharedMemoryRing.create(at: region.base, capacity: 1024)
                var writer = SharedMemoryRing.WriterState()
                var reader = SharedMemoryRing.ReaderState()
                var generator = SplitMix(seed: UInt64(seed))
                for step in 0..<200 {
                    let bytes = Self.record(step)
                    _ = try? bytes.withUnsafeBytes { try ring.tryWrite($0, state: &writer) }
                    // Flip a few random bytes: in the data, or in the published head.
                    for _ in 0..<Int(generator.next() % 3) {
                        let offset = generator.next() % 2 == 0
                            ? 64 + Int(generator.next() % 8)
                            : SharedMemoryRing.headerSize + Int(generator.next() % 1024)
                        region.base.storeBytes(of: UInt8(truncatingIfNeeded: generator.next()), toByteOffset: offset, as: UInt8.self)
                    }
                    do {
                        while let record = try ring.tryRead(state: &reader) {
                            #expect(record.count <= ring.maxRecord)
                            records += 1
                        }
                    } catch {
                        errors += 1
                        break  // a real connection closes here
                    }
                }
            }
            #expect(errors > 0, "corruption was detected")
            #expect(records > 0)
            // A corrupted header is refused when the ring is opened.
            let region = try SharedMemoryRegion(creating: SharedMemoryRing.size(capacity: 64))
            _ = SharedMemoryRing.create(at: region.base, capacity: 64)
            region.base.storeBytes(of: UInt32(3), toByteOffset: 4, as: UInt32.self)
            #expect(throws: ProtocolError.self) { try SharedMemoryRing.open(at: region.base, size: region.size) }
        }
    }

    /// The buffer pool behind large frames: the writer copies bytes into free
    /// blocks, the reader gets a view of them (no copy) through its own mapping,
    /// and the blocks return when the view goes. References out of range, with a
    /// length their blocks cannot hold, or to blocks the reader still holds are
    /// refused with a `ProtocolError`.
    @Test func bufferPoolBlocksAreReadInPlaceReturnedAndCheckedAgainstHostileReferences() async throws {
        try await withResourceCheck {
            let geometry = BufferPoolGeometry(bytes: 1 << 20, at: 4096)  // 16 blocks of 64 KiB
            let region = try SharedMemoryRegion(creating: geometry.offset + geometry.size)
            let readerRegion = try SharedMemoryRegion(mapping: dup(region.fd), size: region.size)
            let writer = BufferPoolWriter(region: region.base, geometry: geometry)
            let reader = BufferPoolReader(region: readerRegion, geometry: geometry)
            let bytes = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
            let reference = try #require(bytes.withUnsafeBytes { writer.store($0) })
            #expect(reference == BufferPoolReference(firstBlock: 0, blockCount: 4, length: 200_000))
            #expect(writer.blocksInUse == 4)
            var view: ByteBuffer? = try reader.buffer(for: reference)
            #expect(view.map { Array($0.readableBytesView) } == bytes)
            #expect(view.map(isInSharedMemoryPool) == true)
            #expect(!isInSharedMemoryPool(ByteBuffer(bytes: bytes)))
            // Blocks this side still holds, in whole or in part.
            #expect(throws: ProtocolError.self) { try reader.buffer(for: reference) }
            #expect(throws: ProtocolError.self) { try reader.buffer(for: BufferPoolReference(firstBlock: 3, blockCount: 2, length: 70_000)) }
            // Out of range, or a length the blocks cannot hold (too much, or a block too many).
            let hostile: [(UInt32, UInt32, UInt64)] = [
                (16, 1, 10), (15, 2, 70_000), (4, 0, 0), (4, 1, 0), (4, 1, 70_000), (4, 2, 10),
                (UInt32.max, 2, 10), (4, UInt32.max, 10), (4, 1, UInt64.max),
            ]
            for (first, count, length) in hostile {
                #expect(throws: ProtocolError.self, "blocks \(first)+\(count), \(length) bytes") {
                    try reader.buffer(for: BufferPoolReference(firstBlock: first, blockCount: count, length: length))
                }
            }
            #expect(reader.blocksHeld == 4)
            // A slice keeps the blocks; the last view going returns them.
            let slice = view!.getSlice(at: 100, length: 10)!
            view = nil
            #expect(writer.blocksInUse == 4)
            #expect(slice.readableBytesView.elementsEqual(bytes[100..<110]))
            _ = consume slice
            #expect(writer.blocksInUse == 0)
            #expect(reader.blocksHeld == 0)
            // Freed blocks are used again; a pool without a free run says so.
            #expect(bytes.withUnsafeBytes { writer.store($0) }?.firstBlock == 0)
            let tooBig = [UInt8](repeating: 1, count: 13 * 65_536)
            #expect(tooBig.withUnsafeBytes { writer.store($0) } == nil)
        }
    }

    /// A reference record crosses the ring as its 16-byte body and ends the read;
    /// a reference record of any other length is refused.
    @Test func referenceRecordsCrossTheRingAndAreChecked() async throws {
        try await withResourceCheck {
            let region = try SharedMemoryRegion(creating: SharedMemoryRing.size(capacity: 4096))
            let ring = SharedMemoryRing.create(at: region.base, capacity: 4096)
            var writer = SharedMemoryRing.WriterState()
            var reader = SharedMemoryRing.ReaderState()
            let reference = BufferPoolReference(firstBlock: 7, blockCount: 3, length: 150_000)
            let before: [UInt8] = [1, 2, 3]
            let after: [UInt8] = [4]
            #expect(try before.withUnsafeBytes { raw throws(ProtocolError) in try ring.writeSome(raw, state: &writer) } == 3)
            #expect(try ring.tryWriteReference(reference, state: &writer))
            #expect(try after.withUnsafeBytes { raw throws(ProtocolError) in try ring.writeSome(raw, state: &writer) } == 1)
            var buffer = ByteBuffer()
            var received: BufferPoolReference?
            #expect(try ring.readAvailable(into: &buffer, state: &reader, limit: 1 << 20, reference: &received) == 3)
            #expect(received == reference)
            #expect(Array(buffer.readableBytesView) == [1, 2, 3])
            received = nil
            #expect(try ring.readAvailable(into: &buffer, state: &reader, limit: 1 << 20, reference: &received) == 1)
            #expect(received == nil)
            // A hostile length word: the reference flag with 8 bytes.
            let start = writer.head
            #expect(try ring.tryWriteReference(reference, state: &writer))
            let offset = SharedMemoryRing.headerSize + Int(start % 4096)
            region.base.storeBytes(of: (UInt32(1 << 31) | 8).littleEndian, toByteOffset: offset, as: UInt32.self)
            #expect(throws: ProtocolError.self) {
                try ring.readAvailable(into: &buffer, state: &reader, limit: 1 << 20, reference: &received)
            }
        }
    }

    /// Across processes: a child maps the same memfd (its standard input) and
    /// echoes every record back through the second ring.
    @Test func aChildProcessEchoesRecordsThroughSharedMemory() async throws {
        try await withResourceCheck {
            let capacity = 8192
            let ringSize = SharedMemoryRing.size(capacity: capacity)
            let region = try SharedMemoryRegion(creating: 2 * ringSize)
            let toChild = SharedMemoryRing.create(at: region.base, capacity: capacity)
            let fromChild = SharedMemoryRing.create(at: region.base + ringSize, capacity: capacity)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ChildProcess.helperPath)
            process.arguments = ["--ring-echo", "\(capacity)"]
            process.standardInput = FileHandle(fileDescriptor: region.fd, closeOnDealloc: false)
            let child = WatchedProcess(process)
            try child.run()
            let count = 20_000
            async let sent: Void = onThread {
                var state = SharedMemoryRing.WriterState()
                for index in 1...count { try toChild.write(Self.record(index) + [1], state: &state) }  // never empty…
                try toChild.write([], state: &state)  // …until the end
            }
            let mismatches: Int = try await onThread {
                var state = SharedMemoryRing.ReaderState()
                let deadline = ContinuousClock.now + .seconds(60)
                var mismatches = 0
                for index in 1...count {
                    let record = try fromChild.read(state: &state, until: deadline)
                    if record != Self.record(index) + [1] { mismatches += 1 }
                }
                return mismatches
            }
            try await sent
            #expect(mismatches == 0)
            #expect(await child.waitForExit() == 0)
        }
    }
}

/// CPU time used by the calling thread.
func threadCPUTime() -> Duration {
    var spec = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
    return .seconds(spec.tv_sec) + .nanoseconds(spec.tv_nsec)
}

/// A small deterministic generator for the corruption test.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
#endif
