internal import IntercomTransport
internal import IntercomWire
internal import NIOCore  // ByteBuffer
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// The first receiver of every connection: sends this side's hello, waits for the
/// other side's, agrees on version and codec, then hands the stream to a new ``Peer``
/// — on the same transport, or on the one it upgraded to when both hellos
/// offered it (through ``TransportUpgrade``: no knowledge of which transports).
///
/// Confined to the transport's thread (every callback and the timer run there).
final class Handshake: FrameReceiver, @unchecked Sendable {
    private let transport: any FrameTransport
    private let router: Router?
    private let configuration: Peer.Configuration
    private let completion: @Sendable (Result<Peer, IntercomError>) -> Void
    /// What TLS proved about the other side (network connections).
    private let network: NetworkSession?
    private var finished = false
    private var timer: (any ScheduledWork)?
    private var startedAt = ContinuousClock.now
    /// Whether this side's hello offers shared memory (the transport can upgrade).
    private var offersSharedMemory = false
    /// Whether this side's hello offers descriptors (a Unix stream socket).
    private var offersDescriptors = false
    /// The upgrade under way (its rings are made only once both hellos offered it,
    /// so a connection that never completes a hello costs no shared memory).
    private var upgrade: (any TransportUpgrade)?
    /// Both hellos offered shared memory; the upgrade conversation is under way.
    private var upgrading = false
    /// The socket ended during the upgrade (NIO reads to the end of the stream when
    /// it sees it end, even while paused); the upgrade thread decides the outcome.
    private var socketEndedWhileUpgrading = false

    /// `completion` is called once, on the transport's thread, with the peer or why there is none.
    init(
        transport: any FrameTransport, router: Router?, configuration: Peer.Configuration, network: NetworkSession? = nil,
        completion: @escaping @Sendable (Result<Peer, IntercomError>) -> Void
    ) {
        self.network = network
        self.transport = transport
        self.router = router
        self.configuration = configuration
        self.completion = completion
    }

    private var ownHello: Hello {
        var capabilities: UInt64 =
            Hello.streamsCapability | Hello.inputStreamsCapability | Hello.suspendCapability | Hello.compressionCapability
        if self.offersSharedMemory { capabilities |= Hello.sharedMemoryCapability }
        // Descriptors travel on a channel beside a local socket: set up by the
        // shared-memory upgrade, or after the hellos when the connection stays on its socket.
        if self.offersDescriptors { capabilities |= Hello.descriptorsCapability }
        var hello = Hello(
            preferredCodec: self.configuration.customCodecs.isEmpty ? self.configuration.preferredCodec : .custom,
            maxFrameSize: UInt32(clamping: self.configuration.limits.maxFrameSize),
            pid: UInt32(bitPattern: getpid()),
            capabilities: capabilities,
            name: self.configuration.name)
        hello.customCodecs = self.configuration.customCodecs.map(\.name)
        return hello
    }

    /// The codec the hellos agreed on, as this side implements it.
    private func codec(for agreement: Hello.Agreement) -> PayloadCodec? {
        if let name = agreement.customCodec {
            return self.configuration.customCodecs.first { $0.name == name }
                .map { PayloadCodec.custom($0, limits: self.configuration.limits) }
        }
        return PayloadCodec(id: agreement.codec, limits: self.configuration.limits)
    }

    func transportActive() {
        self.startedAt = self.transport.now
        self.offersSharedMemory = self.transport.canOfferUpgrade(self.configuration.sharedMemory)
        self.offersDescriptors = self.transport.canOfferDescriptors
        var buffer = ByteBuffer()
        let mark = FrameHeader.begin(into: &buffer, kind: .hello, id: 0)
        self.ownHello.write(into: &buffer)
        FrameHeader.finish(mark, in: &buffer)
        self.transport.send(buffer)
        let timeout = self.configuration.handshakeTimeout
        self.timer = self.transport.schedule(after: timeout) { [self] in
            self.fail(IntercomError(.timeout, "the other side did not complete the handshake within \(timeout); is it an Intercom peer?"))
            self.transport.close()
        }
    }

    func receive(_ frame: consuming Frame) {
        guard !self.finished else { return }
        if self.upgrading {
            // Only the other side's "ready" can come this way before reading moves
            // to the upgrade thread; anything else is for that thread to judge.
            if frame.kind == .sharedMemory, frame.id == Hello.sharedMemoryReadyID { self.upgrade?.remoteReadyArrived() }
            return
        }
        switch frame.kind {
        case .hello:
            do throws(ProtocolError) {
                let remote = try Hello(from: frame.payload)
                let agreement = try self.ownHello.negotiate(with: remote)
                guard let codec = self.codec(for: agreement) else {
                    throw ProtocolError(.incompatiblePeer, "agreed codec \(agreement.customCodec ?? agreement.codec.description) is not available")
                }
                if self.startUpgrade(remote: remote, codec: codec) { return }
                if self.startDescriptorChannel(remote: remote, codec: codec) { return }
                self.establish(remote: remote, codec: codec)
            } catch {
                self.refuse(error)
            }
        case .error:
            let body = try? ErrorBody(from: frame.payload)
            self.fail(
                IntercomError(
                    IntercomError.Code(errorFrameCode: body?.code ?? "protocolViolation"),
                    "the other side refused the handshake: \(body?.message ?? "unreadable error frame")"))
            self.transport.close()
        default:
            self.refuse(ProtocolError(.malformedHandshake, "expected a hello frame first, got \(frame.kind)"))
        }
    }

    /// The connection continues on this transport: its peer takes over.
    private func establish(remote: Hello, codec: PayloadCodec) {
        let peer = Peer(
            transport: self.transport, router: self.router, configuration: self.configuration, remote: remote, codec: codec,
            network: self.network?.identity)
        self.transport.setReceiver(peer)
        self.finished = true
        self.timer?.cancel()
        self.completion(.success(peer))
    }

    /// Sets up a descriptor channel beside the socket if both hellos offered
    /// descriptors (and the connection did not move to shared memory); false if not.
    private func startDescriptorChannel(remote: Hello, codec: PayloadCodec) -> Bool {
        guard self.offersDescriptors, remote.capabilities & Hello.descriptorsCapability != 0 else { return false }
        self.upgrading = true
        let setup = self.transport.beginDescriptorChannel(
            deadline: self.startedAt + self.configuration.handshakeTimeout,
            established: { [self] in
                // On the transport's thread, reading resumed.
                self.upgrading = false
                self.upgrade = nil
                guard !self.finished else { return }  // the handshake timed out meanwhile
                if self.socketEndedWhileUpgrading {
                    self.fail(IntercomError(.peerLost, "the connection closed during the handshake"))
                    self.transport.close()
                    return
                }
                self.establish(remote: remote, codec: codec)
            },
            failed: { [self] error in
                self.upgrading = false
                self.upgrade = nil
                self.fail(error)
                self.transport.close()
            })
        guard let setup else {
            // Both sides agreed; this side cannot (out of descriptors).
            self.upgrading = false
            self.refuse(ProtocolError(.incompatiblePeer, "this side could not set up a descriptor channel (out of descriptors?)"))
            return true
        }
        self.upgrade = setup
        return true
    }

    /// Moves the connection to shared memory if both hellos offered it; false if not.
    private func startUpgrade(remote: Hello, codec: PayloadCodec) -> Bool {
        guard self.offersSharedMemory, remote.capabilities & Hello.sharedMemoryCapability != 0 else { return false }
        self.upgrading = true
        let configuration = self.configuration
        let router = self.router
        let upgrade = self.transport.beginUpgrade(
            options: configuration.sharedMemory,
            passDescriptors: remote.capabilities & Hello.descriptorsCapability != 0, deadline: self.startedAt + configuration.handshakeTimeout,
            limits: configuration.limits, logger: configuration.serviceLogger,
            established: { [self] newTransport in
                // On the new transport's thread, before it serves the connection.
                let peer = Peer(transport: newTransport, router: router, configuration: configuration, remote: remote, codec: codec)
                return { [self] handover in
                    // Back on this transport's thread. Only now may frames reach the peer
                    // (they wait in the ring meanwhile): whoever waits for it has it first.
                    // A listener that had not yet listed a connection when its first call
                    // ran made a service's publish skip that caller's subscription.
                    defer { handover.newTransport.setReceiver(peer) }
                    guard !self.finished else {
                        handover.newTransport.close()  // the handshake timed out or the socket closed meanwhile
                        return
                    }
                    self.finished = true
                    self.timer?.cancel()
                    self.upgrade = nil
                    handover.complete(self.socketEndedWhileUpgrading)
                    self.completion(.success(peer))
                }
            },
            failed: { [self] error in
                var explained = error
                if error.code != .peerLost {
                    explained.message += " (the connection was moving to shared memory; to keep it on its socket, set configuration.sharedMemory.isEnabled = false or INTERCOM_SHARED_MEMORY=off)"
                }
                self.upgrade = nil
                self.fail(explained)
                self.transport.close()
            })
        guard let upgrade else {
            // Both sides agreed to move; this side cannot (out of descriptors or memory).
            self.upgrading = false
            self.refuse(
                ProtocolError(
                    .incompatiblePeer,
                    "this side could not set up shared memory (out of descriptors or memory?); to keep connections on their socket, set configuration.sharedMemory.isEnabled = false or INTERCOM_SHARED_MEMORY=off"))
            return true
        }
        self.upgrade = upgrade
        return true
    }

    /// Tells the other side why the handshake failed, then closes.
    private func refuse(_ error: ProtocolError) {
        self.transport.send(ErrorBody(connectionError: error).frame(id: 0))
        self.fail(IntercomError(error, peer: nil))
        self.transport.close()
    }

    func endOfReadBatch() {}
    func transportWritable() {}

    func transportFailed(_ error: ProtocolError) {
        if self.upgrading {
            self.socketEndedWhileUpgrading = true
            return
        }
        self.fail(IntercomError(error, peer: nil))
    }

    func transportClosed() {
        if self.upgrading {
            self.socketEndedWhileUpgrading = true
            return
        }
        self.fail(IntercomError(.peerLost, "the connection closed during the handshake"))
    }

    private func fail(_ error: IntercomError) {
        self.upgrade = nil
        guard !self.finished else { return }
        self.finished = true
        self.timer?.cancel()
        self.completion(.failure(error))
    }
}
