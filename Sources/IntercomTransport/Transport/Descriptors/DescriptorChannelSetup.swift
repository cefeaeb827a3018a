#if os(Linux)
internal import Glibc
internal import IntercomWire
internal import NIOCore

/// Gives a connection that stays on its Unix socket a descriptor channel, right
/// after the hellos, when both said they pass descriptors and not both moved to
/// shared memory (docs/PROTOCOL.md, "Descriptors"):
///
/// 1. each side stops reading the socket through NIO (a plain `read` would
///    discard descriptors) and sends `sharedMemory` id 1, "ready";
/// 2. on the other's "ready", each side sends `sharedMemory` id 4, "channel"
///    (empty), with its channel's far end attached;
/// 3. each side reads the other's "channel" frame with exact-size `recvmsg`s,
///    never a byte past it — whatever the other side sends next stays in the
///    socket for NIO — and resumes reading through NIO.
///
/// The exchange runs on a thread of its own (blocking reads with a deadline),
/// as the shared-memory upgrade does; nothing else writes the socket meanwhile
/// (the connection has no peer yet).
final class DescriptorChannelSetup: @unchecked Sendable {
    // Immutable after init, except `remoteReady` (set on the event loop before
    // the thread starts) and the descriptors (guarded by `descriptors`).
    private let descriptors: Locked<(socket: Int32, keep: Int32, give: Int32)>
    /// The other side's "ready" arrived through NIO, before reading moved to `recvmsg`.
    var remoteReady = false

    static let channelID: UInt64 = 4

    private init(socket: Int32, keep: Int32, give: Int32) {
        self.descriptors = Locked((socket, keep, give))
    }

    deinit {
        let (socket, keep, give) = self.descriptors.withLock { $0 }
        for fd in [socket, keep, give] where fd >= 0 { close(fd) }
    }

    /// On the event loop: a setup for the connection on `socket`, or nil if this
    /// side cannot (not a Unix stream socket, out of descriptors).
    static func offer(on socket: NIOFrameTransport) -> DescriptorChannelSetup? {
        guard let copy = socket.duplicateUnixSocket() else { return nil }
        guard let pair = DescriptorChannel.makePair() else {
            close(copy)
            return nil
        }
        return DescriptorChannelSetup(socket: copy, keep: pair.keep, give: pair.give)
    }

    /// On the event loop: stops reading, says "ready", and exchanges channels on
    /// a new thread; `finished` runs on the event loop with the channel (reading
    /// resumed), or with why not.
    func start(
        socket: NIOFrameTransport, deadline: ContinuousClock.Instant,
        finished: @escaping @Sendable (Result<DescriptorChannel, IntercomError>) -> Void
    ) {
        socket.setReadingPaused(true, reason: .upgrade)
        // In a later event-loop task: frames NIO already read (perhaps the other
        // side's "ready") are delivered by then.
        socket.executeOnLoop {
            socket.writeDuringHandshake(FrameHeader.empty(kind: .sharedMemory, id: Hello.sharedMemoryReadyID)).whenComplete { result in
                if case .failure(let error) = result {
                    finished(.failure(IntercomError(systemError: error, doing: "setting up the descriptor channel")))
                    return
                }
                let remoteReady = self.remoteReady
                do throws(IntercomError) {
                    try KernelThread.start(named: "intercom-fdsetup") {
                        let result: Result<DescriptorChannel, IntercomError>
                        do throws(IntercomError) {
                            result = .success(try self.exchange(remoteReady: remoteReady, until: deadline))
                        } catch {
                            result = .failure(error)
                        }
                        // Done with the socket's duplicate: closed now, not whenever this object goes.
                        let copy = self.descriptors.withLock { descriptors in
                            defer { descriptors.socket = -1 }
                            return descriptors.socket
                        }
                        if copy >= 0 { close(copy) }
                        socket.executeOnLoop {
                            if case .success = result { socket.setReadingPaused(false, reason: .upgrade) }
                            finished(result)
                        }
                    }
                } catch {
                    finished(.failure(error))
                }
            }
        }
    }

    /// Steps 1–3 on the socket's duplicate: the channel, once both ends are in place.
    private func exchange(remoteReady: Bool, until deadline: ContinuousClock.Instant) throws(IntercomError) -> DescriptorChannel {
        let (socket, keep, give) = self.descriptors.withLock { $0 }
        var readySeen = remoteReady
        var sent = false
        var received: Int32?
        while true {
            if readySeen, !sent {
                let frame = Array(FrameHeader.empty(kind: .sharedMemory, id: Self.channelID).readableBytesView)
                try DescriptorPassing.send(frame, attaching: [give], on: socket, until: deadline)
                self.descriptors.withLock { $0.give = -1 }
                close(give)
                sent = true
            }
            if sent, let received {
                self.descriptors.withLock { $0.keep = -1 }  // the channel owns it now
                return DescriptorChannel(sending: keep, receiving: received)
            }
            let (header, attached) = try Self.readExactly(FrameHeader.size, from: socket, until: deadline)
            var owned = attached
            defer { for fd in owned { close(fd) } }
            let bytes = ByteBuffer(bytes: header)
            let kind = bytes.getInteger(at: 3, as: UInt8.self)
            let extensionLength = Int(bytes.getInteger(at: 6, endianness: .little, as: UInt16.self)!)
            let id = bytes.getInteger(at: 8, endianness: .little, as: UInt64.self)!
            let payloadLength = Int(bytes.getInteger(at: 16, endianness: .little, as: UInt32.self)!)
            guard header[0] == FrameHeader.magic.0, header[1] == FrameHeader.magic.1 else {
                throw IntercomError(.protocolViolation, "the descriptor channel exchange met bytes that are not an Intercom frame")
            }
            if kind == FrameKind.error.rawValue, extensionLength == 0, payloadLength <= 64 << 10 {
                let (payload, more) = try Self.readExactly(payloadLength, from: socket, until: deadline)
                owned += more
                let body = try? ErrorBody(from: ByteBuffer(bytes: payload))
                throw IntercomError(
                    IntercomError.Code(errorFrameCode: body?.code ?? "protocolViolation"),
                    "the other side gave up setting up the descriptor channel: \(body?.message ?? "unreadable error frame")")
            }
            guard kind == FrameKind.sharedMemory.rawValue, extensionLength == 0, payloadLength == 0 else {
                throw IntercomError(.protocolViolation, "expected the descriptor channel exchange, got a frame of kind \(kind ?? 0)")
            }
            switch id {
            case Hello.sharedMemoryReadyID:
                readySeen = true
            case Self.channelID:
                guard received == nil, owned.count == 1, DescriptorChannel.isSeqPacketSocket(owned[0]) else {
                    throw IntercomError(.protocolViolation, "the descriptor channel offered is not one Unix SOCK_SEQPACKET socket")
                }
                received = owned.removeFirst()
            default:
                throw IntercomError(.protocolViolation, "unexpected sharedMemory frame \(id) in the descriptor channel exchange")
            }
        }
    }

    /// Reads exactly `count` bytes (and the descriptors that came with them),
    /// waiting until `deadline`; never more, so what follows stays in the socket.
    private static func readExactly(_ count: Int, from socket: Int32, until deadline: ContinuousClock.Instant)
        throws(IntercomError) -> (bytes: [UInt8], descriptors: [Int32])
    {
        var bytes = [UInt8](repeating: 0, count: count)
        var descriptors: [Int32] = []
        var filled = 0
        while filled < count {
            let (received, attached, _) = bytes.withUnsafeMutableBytes { raw in
                DescriptorPassing.recvmsg(socket, into: UnsafeMutableRawBufferPointer(rebasing: raw[filled...]), maxDescriptors: 4)
            }
            descriptors += attached
            if received > 0 {
                filled += received
            } else if received == 0 {
                for fd in descriptors { close(fd) }
                throw IntercomError(.peerLost, "the other side closed the connection while setting up the descriptor channel")
            } else if errno == EAGAIN || errno == EINTR {
                do throws(IntercomError) {
                    try DescriptorPassing.poll(socket, events: Int16(POLLIN), until: deadline)
                } catch {
                    for fd in descriptors { close(fd) }
                    throw error
                }
            } else {
                for fd in descriptors { close(fd) }
                throw IntercomError(.peerLost, "reading the descriptor channel exchange failed: \(String(cString: strerror(errno)))")
            }
        }
        return (bytes, descriptors)
    }
}

extension DescriptorChannelSetup: TransportUpgrade {
    func remoteReadyArrived() { self.remoteReady = true }
}
#endif
