#if os(Linux)
internal import Atomics
package import IntercomWire
package import NIOCore

/// A single-producer/single-consumer ring of length-prefixed records in shared
/// memory: the building block of the shared-memory transport (one ring per
/// direction).
///
/// Layout (little-endian; docs/PROTOCOL.md, "Shared-memory ring"):
///
/// | offset | size | field |
/// |---:|---:|---|
/// | 0 | 4 | magic `ICSR` |
/// | 4 | 4 | layout version (1) |
/// | 8 | 4 | data capacity in bytes (a power of two) |
/// | 64 | 8 | head: bytes ever written (the writer's) |
/// | 128 | 8 | tail: bytes ever read (the reader's) |
/// | 192 | 4 | data-futex word (bumped when a sleeping reader must wake) |
/// | 196 | 4 | reader-sleeping flag |
/// | 256 | 4 | space-futex word (bumped when a sleeping writer must wake) |
/// | 260 | 4 | writer-sleeping flag |
/// | 320 | capacity | data |
///
/// A record is a u32 payload length and the payload, padded to 8 bytes; it may
/// wrap around the end of the data area. A length word with its top bit set
/// marks a reference record: its 16-byte payload names blocks of the writer's
/// buffer pool that hold the next bytes of the stream (``BufferPoolReference``).
///
/// The other side may be broken or hostile: each side keeps its own position
/// privately and reads the other's once per operation, copies every length it
/// reads from shared memory before checking it, and turns any inconsistency
/// into a ``ProtocolError`` — never a crash or an endless loop.
package struct SharedMemoryRing: @unchecked Sendable {
    // The pointers address the shared region, which outlives the ring (the
    // region object is kept by whoever holds the ring).
    static let magic: UInt32 = 0x5253_4349  // "ICSR"
    static let layoutVersion: UInt32 = 1
    package static let headerSize = 320

    let base: UnsafeMutableRawPointer
    package let capacity: Int
    private let head: UnsafeAtomic<UInt64>
    private let tail: UnsafeAtomic<UInt64>
    private let dataFutex: UnsafeAtomic<UInt32>
    private let readerSleeping: UnsafeAtomic<UInt32>
    private let spaceFutex: UnsafeAtomic<UInt32>
    private let writerSleeping: UnsafeAtomic<UInt32>
    private var data: UnsafeMutableRawPointer { self.base + Self.headerSize }

    /// The bytes a ring with `capacity` data bytes needs.
    package static func size(capacity: Int) -> Int { Self.headerSize + capacity }

    /// Formats a new ring at `base` (`capacity` must be a power of two ≥ 64).
    package static func create(at base: UnsafeMutableRawPointer, capacity: Int) -> SharedMemoryRing {
        precondition(capacity >= 64 && capacity & (capacity - 1) == 0, "ring capacity must be a power of two")
        base.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerSize)
        base.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        base.storeBytes(of: Self.layoutVersion.littleEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: UInt32(capacity).littleEndian, toByteOffset: 8, as: UInt32.self)
        return SharedMemoryRing(base: base, capacity: capacity)
    }

    /// Opens a ring another process formatted, checking its header against `size`.
    package static func open(at base: UnsafeMutableRawPointer, size: Int) throws(ProtocolError) -> SharedMemoryRing {
        let magic = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let version = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let capacity = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        guard magic == Self.magic else { throw ProtocolError(.badMagic, "shared-memory ring has magic \(magic)") }
        guard version == Self.layoutVersion else {
            throw ProtocolError(.unsupportedVersion, "shared-memory ring layout \(version); this build reads \(Self.layoutVersion)")
        }
        guard capacity >= 64, capacity & (capacity - 1) == 0, Self.size(capacity: capacity) <= size else {
            throw ProtocolError(.malformedHeader, "shared-memory ring capacity \(capacity) does not fit its \(size)-byte region")
        }
        return SharedMemoryRing(base: base, capacity: capacity)
    }

    private init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
        func word<T: AtomicValue>(_ offset: Int, _: T.Type) -> UnsafeAtomic<T> {
            UnsafeAtomic<T>(at: (base + offset).assumingMemoryBound(to: T.AtomicRepresentation.self))
        }
        self.head = word(64, UInt64.self)
        self.tail = word(128, UInt64.self)
        self.dataFutex = word(192, UInt32.self)
        self.readerSleeping = word(196, UInt32.self)
        self.spaceFutex = word(256, UInt32.self)
        self.writerSleeping = word(260, UInt32.self)
    }

    /// The most payload one record can carry.
    package var maxRecord: Int { self.capacity - 8 }

    /// The length word's bit that marks a reference record.
    static let referenceFlag: UInt32 = 1 << 31

    private static func recordSize(_ payload: Int) -> Int { (4 + payload + 7) & ~7 }

    // MARK: Writing (one writer)

    /// The writer's private position.
    package struct WriterState {
        package var head: UInt64 = 0
        package init() {}
    }

    /// Appends one record if there is room; false if the ring is full.
    ///
    /// - Throws: ``ProtocolError`` if the reader's position is impossible (a
    ///   corrupted or hostile reader).
    package func tryWrite(_ payload: UnsafeRawBufferPointer, state: inout WriterState) throws(ProtocolError) -> Bool {
        precondition(payload.count <= self.maxRecord, "record larger than the ring")
        let used = try self.usedSpace(state)
        guard UInt64(Self.recordSize(payload.count)) <= UInt64(self.capacity) - used else { return false }
        self.append(payload, state: &state)
        return true
    }

    /// Bytes written and not yet read, from the reader's position read once and checked.
    private func usedSpace(_ state: WriterState) throws(ProtocolError) -> UInt64 {
        let tail = self.tail.load(ordering: .acquiring)
        let used = state.head &- tail
        guard used <= UInt64(self.capacity) else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: reader position \(tail) is ahead of the writer's \(state.head)")
        }
        return used
    }

    /// Writes `payload` as one record (the caller checked the room), publishes it
    /// and rings the reader's doorbell if it sleeps.
    private func append(_ payload: UnsafeRawBufferPointer, flags: UInt32 = 0, state: inout WriterState) {
        var length = (UInt32(payload.count) | flags).littleEndian
        withUnsafeBytes(of: &length) { self.copyIn($0, at: state.head) }
        if payload.count > 0 { self.copyIn(payload, at: state.head &+ 4) }
        state.head &+= UInt64(Self.recordSize(payload.count))
        self.head.store(state.head, ordering: .sequentiallyConsistent)
        self.wakeReader()
    }

    /// Sleeps until the reader frees room (or `timeout`), after spinning `spins` times.
    package func waitForSpace(needed: Int, state: WriterState, spins: Int, timeout: Duration) {
        let size = UInt64(Self.recordSize(needed))
        func hasRoom() -> Bool {
            let used = state.head &- self.tail.load(ordering: .acquiring)
            return used > UInt64(self.capacity) || size <= UInt64(self.capacity) - used
        }
        for _ in 0..<spins where hasRoom() { return }
        let seen = self.spaceFutex.load(ordering: .sequentiallyConsistent)
        self.writerSleeping.store(1, ordering: .sequentiallyConsistent)
        if hasRoom() { return }
        Futex.wait(self.base + 256, expected: seen, timeout: timeout)
    }

    // MARK: Reading (one reader)

    /// The reader's private position.
    package struct ReaderState {
        package var tail: UInt64 = 0
        package init() {}
    }

    /// Takes the next record if there is one.
    ///
    /// - Throws: ``ProtocolError`` if what the writer published is inconsistent.
    package func tryRead(state: inout ReaderState) throws(ProtocolError) -> [UInt8]? {
        let used = try self.publishedBytes(state)
        if used == 0 { return nil }
        let (length, size, isReference) = try self.record(at: state.tail, unread: used)
        guard !isReference else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: a buffer-pool reference where a record was expected")
        }
        let payload = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            self.copyOut(UnsafeMutableRawBufferPointer(buffer), at: state.tail &+ 4)
            count = length
        }
        state.tail &+= UInt64(size)
        self.tail.store(state.tail, ordering: .sequentiallyConsistent)
        if self.writerSleeping.load(ordering: .sequentiallyConsistent) != 0 {
            self.writerSleeping.store(0, ordering: .sequentiallyConsistent)
            self.spaceFutex.wrappingIncrement(ordering: .sequentiallyConsistent)
            Futex.wake(self.base + 256)
        }
        return payload
    }

    /// Sleeps until a record arrives (or `timeout`), after spinning `spins` times.
    package func waitForData(state: ReaderState, spins: Int, timeout: Duration) {
        func hasData() -> Bool { self.head.load(ordering: .acquiring) != state.tail }
        for _ in 0..<spins where hasData() { return }
        let seen = self.dataFutex.load(ordering: .sequentiallyConsistent)
        self.readerSleeping.store(1, ordering: .sequentiallyConsistent)
        if hasData() { return }
        Futex.wait(self.base + 192, expected: seen, timeout: timeout)
    }

    /// Bytes the writer published and the reader has not taken, from the
    /// writer's position read once and checked.
    private func publishedBytes(_ state: ReaderState) throws(ProtocolError) -> UInt64 {
        let head = self.head.load(ordering: .acquiring)
        let unread = head &- state.tail
        guard unread <= UInt64(self.capacity) else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: writer position \(head) is inconsistent with the reader's \(state.tail)")
        }
        return unread
    }

    /// The payload length, padded size and kind of the record at `position`: its
    /// length word is copied out of shared memory once, then checked against what
    /// is published (and a reference record's length against its fixed size).
    private func record(at position: UInt64, unread: UInt64) throws(ProtocolError) -> (length: Int, size: Int, isReference: Bool) {
        guard unread >= 8 else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: \(unread) published bytes cannot hold a record")
        }
        var lengthBytes: UInt32 = 0
        withUnsafeMutableBytes(of: &lengthBytes) { self.copyOut($0, at: position) }
        let word = UInt32(littleEndian: lengthBytes)
        let isReference = word & Self.referenceFlag != 0
        let length = Int(word & ~Self.referenceFlag)
        let size = Self.recordSize(length)
        guard length <= self.maxRecord, UInt64(size) <= unread else {
            throw ProtocolError(.frameTooLarge, "shared-memory ring: a record of \(length) bytes does not fit the \(unread) bytes published")
        }
        guard !isReference || length == BufferPoolReference.encodedSize else {
            throw ProtocolError(.malformedHeader, "shared-memory ring: a buffer-pool reference of \(length) bytes")
        }
        return (length, size, isReference)
    }

    // MARK: Stream use (the shared-memory transport)
    //
    // The transport treats the ring as a byte stream cut into records: a writer
    // puts as much of its bytes as fits into one record, the reader copies every
    // published record into one buffer. Waking is explicit: each side sleeps on
    // one futex word (the data futex of the ring it reads, its "doorbell"), and
    // whoever has news for it rings that doorbell with ``wakeReader()``.

    /// Writes one record holding as many of `bytes` as fit now (at least one byte)
    /// and rings the reader's doorbell if it sleeps; returns how many bytes went in
    /// (0 when the ring is full).
    ///
    /// - Throws: ``ProtocolError`` if the reader's position is impossible.
    package func writeSome(_ bytes: UnsafeRawBufferPointer, state: inout WriterState) throws(ProtocolError) -> Int {
        let free = self.capacity - Int(try self.usedSpace(state))
        // Room for the length word and at least 8 bytes of payload, else wait for more.
        guard free >= 16 else { return 0 }
        let count = min(bytes.count, (free - 8) & ~7, self.maxRecord)
        guard count > 0 || bytes.isEmpty else { return 0 }
        self.append(UnsafeRawBufferPointer(rebasing: bytes.prefix(count)), state: &state)
        return count
    }

    /// Writes a reference record naming pool blocks that hold the next bytes of
    /// the stream; false if the ring has no room for it.
    ///
    /// - Throws: ``ProtocolError`` if the reader's position is impossible.
    package func tryWriteReference(_ reference: BufferPoolReference, state: inout WriterState) throws(ProtocolError) -> Bool {
        let used = try self.usedSpace(state)
        guard UInt64(Self.recordSize(BufferPoolReference.encodedSize)) <= UInt64(self.capacity) - used else { return false }
        var body = (reference.firstBlock.littleEndian, reference.blockCount.littleEndian, reference.length.littleEndian)
        withUnsafeBytes(of: &body) { raw in
            self.append(UnsafeRawBufferPointer(rebasing: raw.prefix(BufferPoolReference.encodedSize)), flags: Self.referenceFlag, state: &state)
        }
        return true
    }

    /// Copies every published record (stopping once `limit` bytes were taken, or
    /// after a reference record) into `buffer`, frees their space, and returns the
    /// number of payload bytes copied. A reference record ends the read: its body
    /// goes to `reference`, and the bytes it names follow those copied.
    /// Each length is read from shared memory once, into a local, and checked.
    ///
    /// - Throws: ``ProtocolError`` if what the writer published is inconsistent.
    package func readAvailable(
        into buffer: inout ByteBuffer, state: inout ReaderState, limit: Int, reference: inout BufferPoolReference?
    ) throws(ProtocolError) -> Int {
        var unread = try self.publishedBytes(state)
        if unread == 0 { return 0 }
        buffer.reserveCapacity(minimumWritableBytes: min(Int(unread), limit))
        var position = state.tail
        var copied = 0
        while unread > 0, copied < limit {
            let (length, size, isReference) = try self.record(at: position, unread: unread)
            if isReference {
                var body: (UInt32, UInt32, UInt64) = (0, 0, 0)
                withUnsafeMutableBytes(of: &body) { raw in
                    self.copyOut(UnsafeMutableRawBufferPointer(rebasing: raw.prefix(BufferPoolReference.encodedSize)), at: position &+ 4)
                }
                reference = BufferPoolReference(
                    firstBlock: UInt32(littleEndian: body.0), blockCount: UInt32(littleEndian: body.1), length: UInt64(littleEndian: body.2))
                position &+= UInt64(size)
                break
            }
            if length > 0 {
                buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { target in
                    self.copyOut(UnsafeMutableRawBufferPointer(rebasing: target.prefix(length)), at: position &+ 4)
                    return length
                }
            }
            position &+= UInt64(size)
            unread -= UInt64(size)
            copied += length
        }
        state.tail = position
        self.tail.store(position, ordering: .sequentiallyConsistent)
        return copied
    }

    /// Whether the writer has published bytes the reader at `state` has not taken.
    package func hasData(_ state: ReaderState) -> Bool {
        self.head.load(ordering: .sequentiallyConsistent) != state.tail
    }

    /// Free bytes as the writer at `state` sees them.
    package func freeSpace(_ state: WriterState) -> Int {
        let used = state.head &- self.tail.load(ordering: .sequentiallyConsistent)
        return used > UInt64(self.capacity) ? 0 : self.capacity - Int(used)
    }

    /// Rings the reader's doorbell if it said it sleeps (a no-op otherwise).
    package func wakeReader() {
        guard self.readerSleeping.load(ordering: .sequentiallyConsistent) != 0,
            self.readerSleeping.exchange(0, ordering: .sequentiallyConsistent) != 0
        else { return }
        self.dataFutex.wrappingIncrement(ordering: .sequentiallyConsistent)
        Futex.wake(self.base + 192)
    }

    /// The reader is about to sleep: returns the doorbell value to sleep on. Check
    /// for work once more after this, then ``sleep(seen:timeout:)``.
    package func prepareToSleep() -> UInt32 {
        let seen = self.dataFutex.load(ordering: .sequentiallyConsistent)
        self.readerSleeping.store(1, ordering: .sequentiallyConsistent)
        return seen
    }

    /// Sleeps until the doorbell rings (or `timeout`) unless it rang since `seen`.
    package func sleep(seen: UInt32, timeout: Duration) {
        Futex.wait(self.base + 192, expected: seen, timeout: timeout)
        self.readerSleeping.store(0, ordering: .sequentiallyConsistent)
    }

    /// The reader found work after ``prepareToSleep()`` and stays up.
    package func cancelSleep() {
        self.readerSleeping.store(0, ordering: .sequentiallyConsistent)
    }

    /// The writer waits for room: asks the reader to ring the writer's doorbell once it took bytes.
    package func requestSpaceNotice() {
        self.writerSleeping.store(1, ordering: .sequentiallyConsistent)
    }

    /// On the reader's side, after taking bytes: whether the writer asked for a
    /// space notice (clearing the request).
    package func takeSpaceNoticeRequest() -> Bool {
        self.writerSleeping.load(ordering: .sequentiallyConsistent) != 0
            && self.writerSleeping.exchange(0, ordering: .sequentiallyConsistent) != 0
    }

    // MARK: Blocking forms (for a thread that owns one side)

    /// Writes one record, waiting for room as long as it takes.
    package func write(_ payload: [UInt8], state: inout WriterState, spins: Int = 64) throws(ProtocolError) {
        while true {
            let written: Bool
            do {
                written = try payload.withUnsafeBytes { try self.tryWrite($0, state: &state) }
            } catch let error as ProtocolError {
                throw error
            } catch {
                preconditionFailure("tryWrite throws only ProtocolError")  // withUnsafeBytes erases the type
            }
            if written { return }
            self.waitForSpace(needed: payload.count, state: state, spins: spins, timeout: .milliseconds(100))
        }
    }

    /// Reads the next record, waiting for one until `deadline` (nil when it passes).
    package func read(state: inout ReaderState, until deadline: ContinuousClock.Instant, spins: Int = 64)
        throws(ProtocolError) -> [UInt8]?
    {
        while ContinuousClock.now < deadline {
            if let record = try self.tryRead(state: &state) { return record }
            self.waitForData(state: state, spins: spins, timeout: .milliseconds(100))
        }
        return nil
    }

    // MARK: Wrapping copies

    private func copyIn(_ bytes: UnsafeRawBufferPointer, at position: UInt64) {
        let offset = Int(position & UInt64(self.capacity - 1))
        let first = min(bytes.count, self.capacity - offset)
        (self.data + offset).copyMemory(from: bytes.baseAddress!, byteCount: first)
        if first < bytes.count {
            self.data.copyMemory(from: bytes.baseAddress! + first, byteCount: bytes.count - first)
        }
    }

    private func copyOut(_ bytes: UnsafeMutableRawBufferPointer, at position: UInt64) {
        guard bytes.count > 0 else { return }
        let offset = Int(position & UInt64(self.capacity - 1))
        let first = min(bytes.count, self.capacity - offset)
        bytes.baseAddress!.copyMemory(from: self.data + offset, byteCount: first)
        if first < bytes.count {
            (bytes.baseAddress! + first).copyMemory(from: self.data, byteCount: bytes.count - first)
        }
    }
}
#endif
