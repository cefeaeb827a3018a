#if os(Linux)
internal import Atomics
internal import Glibc
package import IntercomWire
@_spi(CustomByteBufferAllocator) package import NIOCore
internal import Synchronization

/// Where a side's buffer pool lives in the region it writes, as announced in its
/// "ring" upgrade frame (docs/PROTOCOL.md, "Shared-memory buffer pool").
///
/// The pool is `blockCount` u32 block words at `offset` (0 = free, anything else
/// = in use), then, at `offset + wordsSize`, `blockCount` blocks of `blockSize`
/// bytes. A frame of at least ``BufferPoolWriter/threshold`` bytes is
/// copied into a run of free blocks instead of through the ring; the ring then
/// carries a 16-byte reference to it, and the reader hands the frame on *in
/// place* — its payload is a `ByteBuffer` over the shared blocks, which go back
/// to the writer when the last buffer referring to them goes away.
package struct BufferPoolGeometry: Sendable, Equatable {
    package var offset: Int
    package var blockSize: Int
    package var blockCount: Int

    /// The announcement of a side that reads references but has no pool of its own.
    package static let none = BufferPoolGeometry(offset: 0, blockSize: 0, blockCount: 0)

    package static let defaultBlockSize = 64 << 10
    /// Largest pool accepted from the other side.
    package static let maxPoolBytes = 1 << 30

    package var isEmpty: Bool { self.blockCount == 0 }
    /// Bytes of block words, rounded up so the blocks start on a page.
    package var wordsSize: Int { (self.blockCount * 4 + 4095) & ~4095 }
    /// Bytes the pool occupies in its region.
    package var size: Int { self.isEmpty ? 0 : self.wordsSize + self.blockCount * self.blockSize }

    package init(offset: Int, blockSize: Int, blockCount: Int) {
        self.offset = offset
        self.blockSize = blockSize
        self.blockCount = blockCount
    }

    /// A pool of about `bytes` (whole blocks) placed at `offset`.
    package init(bytes: Int, at offset: Int) {
        let count = min(max(bytes, 0), Self.maxPoolBytes) / Self.defaultBlockSize
        self.init(offset: count == 0 ? 0 : offset, blockSize: count == 0 ? 0 : Self.defaultBlockSize, blockCount: count)
    }

    /// Checks a geometry the other side announced against the region it sent
    /// and the ring at its start (`ringSize` bytes).
    package func validate(regionSize: Int, ringSize: Int) throws(ProtocolError) {
        if self.isEmpty, self.blockSize == 0, self.offset == 0 { return }
        guard self.blockCount > 0, self.blockSize >= 4096, self.blockSize <= 16 << 20,
            self.blockSize & (self.blockSize - 1) == 0, self.offset >= ringSize, self.offset % 64 == 0,
            self.blockCount <= Self.maxPoolBytes / self.blockSize,
            self.offset <= regionSize, self.size <= regionSize - self.offset
        else {
            throw ProtocolError(
                .malformedHandshake,
                "shared-memory buffer pool of \(self.blockCount) × \(self.blockSize) bytes at \(self.offset) does not fit its \(regionSize)-byte region")
        }
    }
}

/// A reference record's body: which blocks of the writer's pool hold the next
/// bytes of the stream (whole frames), and how many bytes they are.
package struct BufferPoolReference: Sendable, Equatable {
    package var firstBlock: UInt32
    package var blockCount: UInt32
    package var length: UInt64

    package init(firstBlock: UInt32, blockCount: UInt32, length: UInt64) {
        self.firstBlock = firstBlock
        self.blockCount = blockCount
        self.length = length
    }

    package static let encodedSize = 16
}

/// The writing side of a pool: allocates runs of free blocks and copies frames
/// into them. Used under the transport's writer lock (one writer at a time).
package struct BufferPoolWriter: @unchecked Sendable {
    // The pointers address the writer's own region, kept mapped by the transport.
    private let words: UnsafeMutableRawPointer
    private let blocks: UnsafeMutableRawPointer
    package let geometry: BufferPoolGeometry

    /// Frames (or batches of whole frames) at least this large travel through the
    /// pool when it has room; smaller ones are cheaper through the ring.
    static let threshold = 64 << 10

    /// The pool in `region` (zero-filled when created, so every block starts free).
    package init(region base: UnsafeMutableRawPointer, geometry: BufferPoolGeometry) {
        precondition(!geometry.isEmpty)
        self.words = base + geometry.offset
        self.blocks = base + geometry.offset + geometry.wordsSize
        self.geometry = geometry
    }

    private func word(_ index: Int) -> UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (self.words + index * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }

    /// Copies `bytes` into the first run of free blocks that holds them and marks
    /// the run in use; nil if no run is free (the caller sends through the ring).
    package func store(_ bytes: UnsafeRawBufferPointer) -> BufferPoolReference? {
        let needed = (bytes.count + self.geometry.blockSize - 1) / self.geometry.blockSize
        guard needed > 0, needed <= self.geometry.blockCount else { return nil }
        // First fit from the start: the blocks in use stay few and low, and so do
        // the pages the pool has touched.
        var start = 0
        var run = 0
        var index = 0
        while index < self.geometry.blockCount, run < needed {
            if self.word(index).load(ordering: .acquiring) == 0 {
                if run == 0 { start = index }
                run += 1
            } else {
                run = 0
            }
            index += 1
        }
        guard run == needed else { return nil }
        for block in start..<(start + needed) { self.word(block).store(1, ordering: .relaxed) }
        (self.blocks + start * self.geometry.blockSize).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        return BufferPoolReference(firstBlock: UInt32(start), blockCount: UInt32(needed), length: UInt64(bytes.count))
    }

    /// Blocks marked in use (for tests and diagnostics).
    package var blocksInUse: Int {
        (0..<self.geometry.blockCount).reduce(0) { $0 + (self.word($1).load(ordering: .relaxed) == 0 ? 0 : 1) }
    }
}

/// The reading side of the other process's pool: turns references into
/// `ByteBuffer`s over the shared blocks, and frees the blocks once those buffers
/// are gone. Keeps the region mapped while any such buffer lives, so a payload
/// kept after its connection closed stays readable.
package final class BufferPoolReader: @unchecked Sendable {
    // `region`, `geometry` and the pointers are immutable; `leased` is guarded by its mutex.
    private let region: SharedMemoryRegion
    private let geometry: BufferPoolGeometry
    private let words: UnsafeMutableRawPointer
    private let blocks: UnsafeMutableRawPointer
    /// Blocks this side holds buffers over: a reference to any of them is a protocol violation.
    private let leased: Locked<[Bool]>

    package init(region: SharedMemoryRegion, geometry: BufferPoolGeometry) {
        precondition(!geometry.isEmpty)
        self.region = region
        self.geometry = geometry
        self.words = region.base + geometry.offset
        self.blocks = region.base + geometry.offset + geometry.wordsSize
        self.leased = Locked([Bool](repeating: false, count: geometry.blockCount))
    }

    /// A buffer over the blocks `reference` names. The reference was copied out
    /// of shared memory once; it is checked here against the pool's geometry and
    /// the blocks this side still holds.
    ///
    /// - Throws: ``ProtocolError`` if the reference is out of range or names a
    ///   block this side has not released.
    package func buffer(for reference: BufferPoolReference) throws(ProtocolError) -> ByteBuffer {
        let first = Int(reference.firstBlock)
        let count = Int(reference.blockCount)
        let length = reference.length
        guard count > 0, first < self.geometry.blockCount, count <= self.geometry.blockCount - first,
            length > UInt64((count - 1) * self.geometry.blockSize), length <= UInt64(count * self.geometry.blockSize)
        else {
            throw ProtocolError(
                .malformedHeader,
                "shared-memory buffer pool: blocks \(first)+\(count) holding \(length) bytes do not fit a pool of \(self.geometry.blockCount) × \(self.geometry.blockSize)")
        }
        let clash = self.leased.withLock { leased -> Bool in
            if leased[first..<(first + count)].contains(true) { return true }
            for block in first..<(first + count) { leased[block] = true }
            return false
        }
        guard !clash else {
            throw ProtocolError(.malformedHeader, "shared-memory buffer pool: blocks \(first)+\(count) are still held by this side")
        }
        let start = self.blocks + first * self.geometry.blockSize
        pooledBuffers.withLock { $0[UInt(bitPattern: start)] = Lease(pool: self, first: first, count: count, length: Int(length)) }
        return ByteBuffer(
            takingOwnershipOf: UnsafeMutableRawBufferPointer(start: start, count: Int(length)),
            allocator: pooledBufferAllocator)
    }

    /// The last buffer over these blocks went away: hand them back to the writer.
    fileprivate func release(first: Int, count: Int) {
        // This side's record first: once the words say free, the writer may send
        // a reference to these blocks again at once.
        self.leased.withLock { leased in
            for block in first..<(first + count) { leased[block] = false }
        }
        for block in first..<(first + count) {
            UnsafeAtomic<UInt32>(at: (self.words + block * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
                .store(0, ordering: .releasing)
        }
    }

    /// Blocks this side holds buffers over (for tests and diagnostics).
    package var blocksHeld: Int { self.leased.withLock { $0.lazy.filter { $0 }.count } }
}

// MARK: Buffers over shared blocks

/// A run of blocks some `ByteBuffer` owns.
private struct Lease {
    let pool: BufferPoolReader
    let first: Int
    let count: Int
    let length: Int
}

/// The leases by the address their buffer starts at: the allocator's C-convention
/// functions receive only the pointer.
private let pooledBuffers = Locked<[UInt: Lease]>([:])

/// Whether `buffer`'s bytes lie in a shared-memory buffer pool (read in place,
/// not copied out of shared memory).
package func isInSharedMemoryPool(_ buffer: ByteBuffer) -> Bool {
    buffer.withUnsafeReadableBytes { raw in
        guard let base = raw.baseAddress else { return false }
        let address = UInt(bitPattern: base)
        // A slice starts inside its storage: look for the lease that spans it.
        return pooledBuffers.withLock { leases in
            leases.contains { start, lease in address >= start && address + UInt(raw.count) <= start + UInt(lease.length) }
        }
    }
}

private func takeLease(_ pointer: UnsafeMutableRawPointer?) -> Lease? {
    guard let pointer else { return nil }
    return pooledBuffers.withLock { $0.removeValue(forKey: UInt(bitPattern: pointer)) }
}

/// The allocator of buffers over pool blocks: their storage is the blocks until
/// it is freed (the blocks go back) or must grow (the bytes move to the heap and
/// the blocks go back); every other allocation is the ordinary heap.
private let pooledBufferAllocator = ByteBufferAllocator(
    allocate: { size in malloc(size) },
    reallocate: { pointer, oldSize, newSize in
        guard let lease = takeLease(pointer) else { return realloc(pointer, newSize) }
        let moved = malloc(newSize)
        if let moved, let pointer { moved.copyMemory(from: pointer, byteCount: min(oldSize, newSize)) }
        lease.pool.release(first: lease.first, count: lease.count)
        return moved
    },
    deallocate: { pointer in
        if let lease = takeLease(pointer) {
            lease.pool.release(first: lease.first, count: lease.count)
        } else {
            free(pointer)
        }
    },
    copy: { target, source, count in target.copyMemory(from: source, byteCount: count) }
)
#endif
