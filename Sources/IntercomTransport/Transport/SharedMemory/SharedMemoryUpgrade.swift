#if os(Linux)
internal import CIntercomShims
internal import Glibc
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization

/// Moves a connection from its Unix socket onto shared memory, right after the
/// hellos (docs/PROTOCOL.md, "Shared-memory upgrade").
///
/// Each side offers the capability only once it holds its outbound ring (a
/// sealed memfd) and a duplicate of the socket's descriptor. When both offered:
///
/// 1. each side stops reading the socket through NIO (a plain `read` would
///    discard descriptors attached to the bytes) and sends `sharedMemory` id 1,
///    "ready": from now on it receives with `recvmsg`;
/// 2. on the other's "ready", each side sends `sharedMemory` id 2 with the size of
///    its ring's region in the payload and the memfd attached (`SCM_RIGHTS`);
/// 3. each side maps the region it received (checking its seals and the ring's
///    header) as the ring it reads;
/// 4. each side writes `sharedMemory` id 3, "mapped", as the first frame of its
///    ring and waits for the other's: once it arrives, the other side has read
///    everything it will ever read from the socket, so neither side's exit can
///    strand descriptors in it. The connection continues over the rings on a
///    thread of its own; the socket stays open, unread, until either side
///    closes: its end is how each side learns the other is gone.
final class SharedMemoryUpgrade: @unchecked Sendable {
    // Immutable after init, except `remoteReady` (the socket's event loop, before
    // the upgrade thread starts) and `descriptor` (guarded by `socketCopy`).
    let ring: SharedMemoryRing
    let region: SharedMemoryRegion
    /// Where this side's buffer pool lies in `region` (empty when it has none).
    let pool: BufferPoolGeometry
    let options: SharedMemoryOptions
    private let socketCopy: Locked<Int32>
    /// The descriptor channel's ends (docs/PROTOCOL.md, "Descriptors"), when both
    /// sides pass descriptors: the one this side sends on, and the one it gives
    /// away with its ring (closed once given).
    private let descriptorPair: Locked<(keep: Int32, give: Int32)?>
    /// The other side's "ready" arrived through NIO, before reading moved to `recvmsg`.
    var remoteReady = false

    static let readyID: UInt64 = Hello.sharedMemoryReadyID
    static let ringID: UInt64 = 2
    static let mappedID: UInt64 = 3
    /// Largest region accepted from the other side (a ring of 256 MiB and the largest pool).
    static let maxRegionSize =
        SharedMemoryRing.size(capacity: 256 << 20) + 4096 + BufferPoolGeometry(bytes: BufferPoolGeometry.maxPoolBytes, at: 0).size

    private init(
        socketCopy: Int32, ring: SharedMemoryRing, region: SharedMemoryRegion, pool: BufferPoolGeometry, options: SharedMemoryOptions,
        descriptorPair: (keep: Int32, give: Int32)?
    ) {
        self.socketCopy = Locked(socketCopy)
        self.descriptorPair = Locked(descriptorPair)
        self.ring = ring
        self.region = region
        self.pool = pool
        self.options = options
    }

    deinit {
        self.closeSocketCopy()
        if let pair = self.descriptorPair.withLock({ $0 }) {
            if pair.keep >= 0 { close(pair.keep) }
            if pair.give >= 0 { close(pair.give) }
        }
    }

    /// Takes the end this side sends descriptors on (the transport owns it from then on).
    private func takeSendingEnd() -> Int32? {
        self.descriptorPair.withLock { pair in
            defer { pair?.keep = -1 }
            return pair?.keep
        }
    }

    /// Prepares an offer for the connection on `socket` (on its event loop), or nil
    /// if it cannot move to shared memory (not a Unix stream socket, no memfd).
    /// `passDescriptors`: both hellos said they pass descriptors, so the ring
    /// offer carries a descriptor channel's end.
    static func offer(on socket: NIOFrameTransport, options: SharedMemoryOptions, passDescriptors: Bool) -> SharedMemoryUpgrade? {
        guard let copy = socket.duplicateUnixSocket() else {
            return nil
        }
        var descriptorPair: (keep: Int32, give: Int32)?
        if passDescriptors {
            guard let pair = DescriptorChannel.makePair() else {
                close(copy)
                return nil
            }
            descriptorPair = pair
        }
        var capacity = 4096
        while capacity < options.ringCapacity, capacity < 256 << 20 { capacity <<= 1 }
        // The pool follows the ring, page-aligned. Its pages cost memory only once
        // a large frame touched them (the memfd is sparse).
        let ringSize = SharedMemoryRing.size(capacity: capacity)
        let pool = BufferPoolGeometry(bytes: options.bufferPoolSize, at: (ringSize + 4095) & ~4095)
        do {
            let region = try SharedMemoryRegion(
                creating: pool.isEmpty ? ringSize : pool.offset + pool.size, name: "intercom-ring")
            let ring = SharedMemoryRing.create(at: region.base, capacity: capacity)
            return SharedMemoryUpgrade(
                socketCopy: copy, ring: ring, region: region, pool: pool, options: options, descriptorPair: descriptorPair)
        } catch {
            close(copy)
            if let descriptorPair {
                close(descriptorPair.keep)
                close(descriptorPair.give)
            }
            return nil
        }
    }

    private func closeSocketCopy() {
        self.socketCopy.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    /// On the socket's event loop, once both hellos offered shared memory: stops
    /// reading the socket, says "ready", and continues on a new thread. There,
    /// `established` gets the transport (to make the peer and install it), after
    /// which the thread serves the connection; or `failed` gets why not.
    func start(
        socket: NIOFrameTransport, deadline: ContinuousClock.Instant, limits: WireLimits, logger: Logger,
        established: @escaping @Sendable (SharedMemoryTransport) -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) {
        socket.setReadingPaused(true, reason: .upgrade)
        // In a later event-loop task: the frames NIO already read (perhaps the
        // other side's "ready") are all delivered by then. The hello, queued
        // earlier, goes out first.
        socket.executeOnLoop { self.sayReady(socket: socket, deadline: deadline, limits: limits, logger: logger, established: established, failed: failed) }
    }

    private func sayReady(
        socket: NIOFrameTransport, deadline: ContinuousClock.Instant, limits: WireLimits, logger: Logger,
        established: @escaping @Sendable (SharedMemoryTransport) -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) {
        socket.writeNow(FrameHeader.empty(kind: .sharedMemory, id: Self.readyID)).whenComplete { result in
            if case .failure(let error) = result {
                failed(IntercomError(systemError: error, doing: "offering shared memory"))
                return
            }
            let remoteReady = self.remoteReady  // on the event loop, after every frame NIO had read
            do throws(IntercomError) {
                try KernelThread.start(named: "intercom-shm") {
                    let transport: SharedMemoryTransport
                    do throws(IntercomError) {
                        let inbound = try self.exchangeRings(remoteReady: remoteReady, until: deadline, limits: limits)
                        self.region.closeDescriptor()
                        inbound.region.closeDescriptor()
                        let positions = try self.confirmMapping(inbound: inbound.ring, until: deadline, limits: limits)
                        // This side uses its pool only if the other side reads references
                        // (it announced a pool geometry, perhaps an empty one).
                        let outboundPool =
                            inbound.pool != nil && !self.pool.isEmpty
                            ? BufferPoolWriter(region: self.region.base, geometry: self.pool) : nil
                        let inboundPool = inbound.pool.flatMap { geometry in
                            geometry.isEmpty ? nil : BufferPoolReader(region: inbound.region, geometry: geometry)
                        }
                        let descriptorChannel = inbound.descriptorSocket.map { receiving in
                            DescriptorChannel(sending: self.takeSendingEnd() ?? -1, receiving: receiving)
                        }
                        transport = SharedMemoryTransport(
                            inbound: (inbound.ring, inbound.region), outbound: (self.ring, self.region),
                            pools: (inboundPool, outboundPool), socket: socket, options: self.options,
                            limits: limits, logger: logger, positions: positions, descriptorChannel: descriptorChannel)
                    } catch {
                        self.closeSocketCopy()
                        failed(error)
                        return
                    }
                    self.closeSocketCopy()
                    established(transport)
                    transport.run()
                }
            } catch {
                self.closeSocketCopy()
                failed(error)
            }
        }
    }

    /// Step 4: "mapped" through the rings both ways. Returns where both rings
    /// stand, and the bytes the other side wrote after its own "mapped" (it may
    /// have started calling already).
    private func confirmMapping(inbound: SharedMemoryRing, until deadline: ContinuousClock.Instant, limits: WireLimits)
        throws(IntercomError) -> SharedMemoryTransport.Positions
    {
        var writer = SharedMemoryRing.WriterState()
        let mapped = FrameHeader.empty(kind: .sharedMemory, id: Self.mappedID)
        do {
            let written = try mapped.withUnsafeReadableBytes { raw throws(ProtocolError) in
                try self.ring.writeSome(raw, state: &writer)
            }
            precondition(written == mapped.readableBytes, "a fresh ring has room for one empty frame")
            var reader = SharedMemoryRing.ReaderState()
            var received = ByteBuffer()
            var reference: BufferPoolReference?
            let fd = self.socketCopy.withLock { $0 }
            // The other side's "mapped" frame rings this ring's doorbell, which
            // wakes the wait at once; the timeout is only for noticing that the
            // other side died instead, and grows (1 ms, 2, 4, … 64) so a slow
            // other side costs a handful of wake-ups, not one per millisecond.
            var deathCheck = Duration.milliseconds(1)
            while received.readableBytes < FrameHeader.size, reference == nil {
                if try inbound.readAvailable(into: &received, state: &reader, limit: 1 << 20, reference: &reference) > 0 { continue }
                guard ContinuousClock.now < deadline else {
                    throw IntercomError(.timeout, "the other side did not complete the shared-memory upgrade in time")
                }
                // The other side may have died meanwhile: its socket says so.
                var entry = pollfd(fd: fd, events: Int16(0x2000) /* POLLRDHUP */, revents: 0)
                if poll(&entry, 1, 0) > 0, entry.revents & Int16(0x2000 | POLLHUP | POLLERR) != 0 {
                    throw IntercomError(.peerLost, "the other side closed the connection during the shared-memory upgrade")
                }
                let seen = inbound.prepareToSleep()
                if inbound.hasData(reader) {
                    inbound.cancelSleep()
                    continue
                }
                inbound.sleep(seen: seen, timeout: deathCheck)
                deathCheck = min(deathCheck * 2, .milliseconds(64))
            }
            guard let frame = try FrameDecoder(limits: limits).next(from: &received),
                frame.kind == .sharedMemory, frame.id == Self.mappedID
            else {
                throw ProtocolError(.malformedHandshake, "the other side's ring did not begin with its \"mapped\" frame")
            }
            return .init(writer: writer, reader: reader, received: received, reference: reference)
        } catch let error as ProtocolError {
            throw IntercomError(error, peer: nil)
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.protocolViolation, "\(error)")
        }
    }

    /// Steps 1–3 on the socket's duplicate: returns the ring the other side writes,
    /// and its pool's geometry if it announced one (nil: an older peer that reads
    /// no pool references).
    private func exchangeRings(remoteReady: Bool, until deadline: ContinuousClock.Instant, limits: WireLimits)
        throws(IntercomError) -> (
            ring: SharedMemoryRing, region: SharedMemoryRegion, pool: BufferPoolGeometry?, descriptorSocket: Int32?
        )
    {
        let passDescriptors = self.descriptorPair.withLock { $0 != nil }
        let fd = self.socketCopy.withLock { $0 }
        var readySeen = remoteReady
        var sentRing = false
        var offer: (size: Int, descriptor: Int32, pool: BufferPoolGeometry?, descriptorSocket: Int32?)?
        var descriptors: [Int32] = []
        var received = ByteBuffer()
        let decoder = FrameDecoder(limits: limits)
        defer { for descriptor in descriptors { close(descriptor) } }
        while true {
            if readySeen, !sentRing {
                var frame = ByteBuffer()
                let mark = FrameHeader.begin(into: &frame, kind: .sharedMemory, id: Self.ringID)
                frame.writeInteger(UInt64(self.region.size), endianness: .little)
                frame.writeInteger(UInt64(self.pool.offset), endianness: .little)
                frame.writeInteger(UInt32(self.pool.blockSize), endianness: .little)
                frame.writeInteger(UInt32(self.pool.blockCount), endianness: .little)
                FrameHeader.finish(mark, in: &frame)
                let give = self.descriptorPair.withLock { $0?.give }
                try DescriptorPassing.send(
                    Array(frame.readableBytesView), attaching: [self.region.fd] + (give.map { [$0] } ?? []), on: fd, until: deadline)
                // Given: the other side holds it now (or will never, if it dies first).
                self.descriptorPair.withLock { pair in
                    if let give = pair?.give, give >= 0 { close(give) }
                    pair?.give = -1
                }
                sentRing = true
            }
            if sentRing, offer != nil { break }
            let (bytes, newDescriptors) = try DescriptorPassing.receive(on: fd, until: deadline)
            descriptors.append(contentsOf: newDescriptors)
            guard !bytes.isEmpty else {
                throw IntercomError(.peerLost, "the other side closed the connection during the shared-memory upgrade")
            }
            received.writeBytes(bytes)
            do {
                while let frame = try decoder.next(from: &received) {
                    switch (frame.kind, frame.id) {
                    case (.sharedMemory, Self.readyID):
                        readySeen = true
                    case (.sharedMemory, Self.ringID):
                        guard offer == nil, let size = frame.payload.getInteger(at: frame.payload.readerIndex, endianness: .little, as: UInt64.self),
                            size >= UInt64(SharedMemoryRing.size(capacity: 64)), size <= UInt64(Self.maxRegionSize),
                            descriptors.count >= (passDescriptors ? 2 : 1)
                        else {
                            throw ProtocolError(.malformedHandshake, "shared-memory ring offer without a usable size or descriptor")
                        }
                        var pool: BufferPoolGeometry?
                        let start = frame.payload.readerIndex
                        if frame.payload.readableBytes >= 24,
                            let offset = frame.payload.getInteger(at: start + 8, endianness: .little, as: UInt64.self),
                            let blockSize = frame.payload.getInteger(at: start + 16, endianness: .little, as: UInt32.self),
                            let blockCount = frame.payload.getInteger(at: start + 20, endianness: .little, as: UInt32.self)
                        {
                            guard offset <= UInt64(Self.maxRegionSize) else {
                                throw ProtocolError(.malformedHandshake, "shared-memory buffer pool offset \(offset) is beyond any region")
                            }
                            pool = BufferPoolGeometry(offset: Int(offset), blockSize: Int(blockSize), blockCount: Int(blockCount))
                        }
                        let memfd = descriptors.removeFirst()
                        var descriptorSocket: Int32?
                        if passDescriptors {
                            let socket = descriptors.removeFirst()
                            guard DescriptorChannel.isSeqPacketSocket(socket) else {
                                close(memfd)
                                close(socket)
                                throw ProtocolError(.malformedHandshake, "the descriptor channel offered is not a Unix SOCK_SEQPACKET socket")
                            }
                            descriptorSocket = socket
                        }
                        offer = (Int(size), memfd, pool, descriptorSocket)
                    case (.error, _):
                        let body = try? ErrorBody(from: frame.payload)
                        throw IntercomError(
                            IntercomError.Code(errorFrameCode: body?.code ?? "protocolViolation"),
                            "the other side gave up the shared-memory upgrade: \(body?.message ?? "unreadable error frame")")
                    default:
                        throw ProtocolError(.malformedHandshake, "expected the shared-memory upgrade, got a \(frame.kind) frame")
                    }
                }
            } catch let error as ProtocolError {
                throw IntercomError(error, peer: nil)
            } catch let error as IntercomError {
                throw error
            } catch {
                throw IntercomError(.protocolViolation, "\(error)")
            }
        }
        let descriptorSocket = offer!.descriptorSocket
        var keepSocket = false
        defer { if !keepSocket, let descriptorSocket { close(descriptorSocket) } }
        guard received.readableBytes == 0 else {
            close(offer!.descriptor)
            throw IntercomError(.protocolViolation, "the other side sent bytes after its shared-memory ring offer")
        }
        let region = try SharedMemoryRegion(receiving: offer!.descriptor, size: offer!.size)
        do {
            let ring = try SharedMemoryRing.open(at: region.base, size: region.size)
            try offer!.pool?.validate(regionSize: region.size, ringSize: SharedMemoryRing.size(capacity: ring.capacity))
            keepSocket = true
            return (ring, region, offer!.pool, descriptorSocket)
        } catch {
            throw IntercomError(error, peer: nil)
        }
    }
}
#endif
