@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import Logging
internal import Synchronization

extension Peer {
    /// How a connection notices that the other side vanished without closing —
    /// a host that lost power, a cut cable, a frozen network path — where the
    /// kernel would not say so for many minutes.
    ///
    /// Any frame from the other side counts as a sign of life; when a whole
    /// ``interval`` passes without one, this side sends a `ping` (which any
    /// Intercom peer answers at once). When ``lostAfter`` passes without a sign
    /// of life, the connection ends: pending calls fail with
    /// ``IntercomError/Code/peerLost``. An idle connection exchanges one small
    /// frame each way every other interval.
    ///
    /// On by default for TCP and TLS connections (``automatic``: every 5 s, lost
    /// after 20 s); off for local ones, whose death the kernel reports at once.
    public struct Heartbeat: Sendable, Hashable {
        /// How often to check for a sign of life (and ping when there was none); nil: never.
        public var interval: Duration?
        /// How long without a sign of life before the other side counts as lost.
        public var lostAfter: Duration
        /// Whether the setting applies to local connections too (``every(_:lostAfter:)``)
        /// or only to network ones (``automatic``).
        var appliesLocally: Bool

        /// No heartbeats.
        public static let off = Heartbeat(interval: nil, lostAfter: .zero, appliesLocally: true)
        /// Every 5 s, lost after 20 s, on TCP and TLS connections only (the default).
        public static let automatic = Heartbeat(interval: .seconds(5), lostAfter: .seconds(20), appliesLocally: false)

        /// Checks every `interval` on every connection, local ones too; the other
        /// side is lost after `lostAfter` (at least one interval) without a sign of life.
        public static func every(_ interval: Duration, lostAfter: Duration) -> Heartbeat {
            Heartbeat(interval: interval, lostAfter: max(lostAfter, interval), appliesLocally: true)
        }

        /// Only for network connections, with these times.
        public static func network(every interval: Duration, lostAfter: Duration) -> Heartbeat {
            Heartbeat(interval: interval, lostAfter: max(lostAfter, interval), appliesLocally: false)
        }
    }

    /// Starts the heartbeat the configuration asks for on this connection's medium.
    func startHeartbeat() {
        let heartbeat = self.configuration.heartbeat
        guard let interval = heartbeat.interval, interval > .zero else { return }
        let network = self.transport.medium == .tcp || self.transport.medium == .tls
        guard network || heartbeat.appliesLocally else { return }
        self.scheduleHeartbeat(after: interval, lastSeen: -1, silentFor: .zero)
    }

    private func scheduleHeartbeat(after interval: Duration, lastSeen: Int, silentFor: Duration) {
        _ = self.transport.schedule(after: interval) { [weak self] in
            self?.heartbeatTick(interval: interval, lastSeen: lastSeen, silentFor: silentFor)
        }
    }

    /// On the transport's thread, once per interval.
    private func heartbeatTick(interval: Duration, lastSeen: Int, silentFor: Duration) {
        guard !self.isClosed else { return }
        let seen = self.received.frames.load(ordering: .relaxed)
        let silence = seen == lastSeen ? silentFor + interval : .zero
        if silence >= self.configuration.heartbeat.lostAfter {
            self.vanished(silentFor: silence)
            return
        }
        if silence > .zero { self.transmit(FrameHeader.empty(kind: .ping, id: 0)) }
        self.scheduleHeartbeat(after: interval, lastSeen: seen, silentFor: silence)
    }

    /// Ends the connection for want of a sign of life.
    private func vanished(silentFor silence: Duration) {
        let place = self.remote.address.map { " at \($0)" } ?? ""
        let reason = IntercomError(
            .peerLost,
            "no sign of life from '\(self.remote.name)'\(place) for \(silence) (heartbeats unanswered): its host or the network path to it is gone",
            context: .init(peer: self.remote.name))
        self.logger.warning("peer vanished", metadata: ["silence": "\(silence)"])
        if let ending = self.withState({ $0.beginClosing(reason) }) { self.failCalls(ending, reason: reason) }
        self.transport.close()
    }
}
