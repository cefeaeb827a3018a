@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import NIOSSL
internal import NIOTLS

/// Sits between the TLS handler and the frame handler of a TLS connection and
/// holds the connection back until TLS is done: the frame handler learns that
/// the channel is active — and so the Intercom handshake starts, hello and all
/// — only once the TLS handshake completed and, on a listener, the access
/// policy admitted the verified client. A refused client is told why in one
/// error frame and disconnected; nothing it sends is read.
///
/// A TLS handshake that does not finish within the configured time closes the
/// connection (a client that opens TCP and says nothing holds no slot for long).
final class TLSGate: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let session: NetworkSession
    /// On a listener: the policy's verdict on the verified identity (nil: admitted).
    private let admit: (@Sendable (PeerIdentity) -> String?)?
    private let timeout: Duration
    private let logger: Logger
    private var activeHeld = false
    private var open = false
    private var timer: Scheduled<Void>?

    init(session: NetworkSession, timeout: Duration, logger: Logger, admit: (@Sendable (PeerIdentity) -> String?)?) {
        self.session = session
        self.timeout = timeout
        self.logger = logger
        self.admit = admit
    }

    func channelActive(context: ChannelHandlerContext) {
        self.activeHeld = true
        let channel = context.channel
        let session = self.session
        let timeout = self.timeout
        self.timer = context.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanosecondsClamped)) {
            session.record(IntercomError(.timeout, "the TLS handshake did not complete within \(timeout)"))
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let tls = event as? TLSUserEvent, case .handshakeCompleted = tls else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        self.timer?.cancel()
        let identity = self.session.identity
        if let admit = self.admit,
            let refusal = admit(
                PeerIdentity(name: "", reportedPID: 0, credentials: nil, certificate: identity.certificate, address: identity.address))
        {
            // The listener logs it when the handshake it waits for fails.
            self.session.record(IntercomError(.permissionDenied, "refused by the access policy: \(refusal)"))
            let frame = ErrorBody(code: IntercomError.Code.permissionDenied.name, message: "refused by the access policy: \(refusal)")
                .frame(id: 0)
            let channel = context.channel
            context.writeAndFlush(NIOAny(frame)).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        self.open = true
        if self.activeHeld { context.fireChannelActive() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.open { context.fireChannelRead(data) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.open { context.fireChannelReadComplete() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The TLS library's failures (a refused certificate, a bad alert) close the
        // connection; the session keeps this side's own verdict if it made one.
        self.logger.debug("TLS error", metadata: ["error": "\(error)"])
        self.session.recordTLSError(error)
        context.fireErrorCaught(error)
    }
}
