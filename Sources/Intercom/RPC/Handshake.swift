internal import IntercomWire
internal import NIOCore
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// The first receiver of every connection: sends this side's hello, waits for the
/// other side's, agrees on version and codec, then hands the stream to a new ``Peer``.
///
/// Confined to the transport's thread (every callback and the timer run there).
final class Handshake: FrameReceiver, @unchecked Sendable {
    private let transport: any FrameTransport
    private let router: Router?
    private let configuration: Peer.Configuration
    private let promise: EventLoopPromise<Peer>
    private var finished = false
    private var timer: (any ScheduledWork)?

    init(transport: any FrameTransport, router: Router?, configuration: Peer.Configuration, promise: EventLoopPromise<Peer>) {
        self.transport = transport
        self.router = router
        self.configuration = configuration
        self.promise = promise
    }

    private var ownHello: Hello {
        Hello(
            preferredCodec: self.configuration.preferredCodec,
            maxFrameSize: UInt32(clamping: self.configuration.limits.maxFrameSize),
            pid: UInt32(bitPattern: getpid()),
            name: self.configuration.name)
    }

    func transportActive() {
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

    func receive(_ frame: Frame) {
        guard !self.finished else { return }
        switch frame.kind {
        case .hello:
            do throws(ProtocolError) {
                let remote = try Hello(from: frame.payload)
                let agreement = try self.ownHello.negotiate(with: remote)
                guard let codec = PayloadCodec(id: agreement.codec, limits: self.configuration.limits) else {
                    throw ProtocolError(.incompatiblePeer, "agreed codec \(agreement.codec) is not available")
                }
                let peer = Peer(
                    transport: self.transport, router: self.router, configuration: self.configuration, remote: remote, codec: codec)
                self.transport.setReceiver(peer)
                self.finished = true
                self.timer?.cancel()
                self.promise.succeed(peer)
            } catch {
                self.refuse(error)
            }
        case .error:
            let body = try? ErrorBody(from: frame.payload)
            self.fail(
                IntercomError(
                    IntercomError.Code(wireName: body?.code ?? "protocolViolation"),
                    "the other side refused the handshake: \(body?.message ?? "unreadable error frame")"))
            self.transport.close()
        default:
            self.refuse(ProtocolError(.malformedHandshake, "expected a hello frame first, got \(frame.kind)"))
        }
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
        self.fail(IntercomError(error, peer: nil))
    }

    func transportClosed() {
        self.fail(IntercomError(.peerLost, "the connection closed during the handshake"))
    }

    private func fail(_ error: IntercomError) {
        guard !self.finished else { return }
        self.finished = true
        self.timer?.cancel()
        self.promise.fail(error)
    }
}
