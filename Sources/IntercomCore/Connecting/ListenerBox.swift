internal import IntercomWire
@_spi(IntercomInternals) internal import IntercomTransport
internal import NIOCore

/// Sends one error frame as soon as the connection is active, then closes it.
/// (Writing from the child initializer itself would wait for a registration that
/// waits for the initializer.)
final class RefuseOnActive: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let frame: ByteBuffer
    init(frame: ByteBuffer) { self.frame = frame }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        context.writeAndFlush(NIOAny(self.frame)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Nothing the refused client sends is read.
    }
}

/// Lets the acceptor find the listener, which exists only after it started, and
/// keeps the channels of the listener's connections until they close.
final class ListenerBox: Sendable {
    private struct Weak {
        weak var listener: PeerListener?
    }
    // Weak: the listener owns the acceptor, which owns this box.
    private let listener = Locked(Weak())
    private let open = Locked((channels: [ObjectIdentifier: any Channel](), stopped: false))

    /// Keeps `channel` until it closes; false if the listener closed already.
    func track(_ channel: any Channel) -> Bool {
        let key = ObjectIdentifier(channel)
        let tracked = self.open.withLock { open -> Bool in
            guard !open.stopped else { return false }
            open.channels[key] = channel
            return true
        }
        if tracked {
            channel.closeFuture.whenComplete { _ in _ = self.open.withLock { $0.channels.removeValue(forKey: key) } }
        }
        return tracked
    }

    /// Tracks no more channels; returns those still open.
    func stopTracking() -> [any Channel] {
        self.open.withLock { open in
            open.stopped = true
            return Array(open.channels.values)
        }
    }

    func set(_ listener: PeerListener) {
        self.listener.withLock { $0.listener = listener }
    }

    /// Hands a peer that completed its handshake to the listener; closes it if
    /// the listener is gone.
    func adopt(_ peer: Peer) {
        if let listener = self.listener.withLock({ $0.listener }) {
            listener.adopt(peer)
        } else {
            Task { await peer.close() }
        }
    }
}
