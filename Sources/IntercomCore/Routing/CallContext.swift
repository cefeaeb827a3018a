internal import IntercomTransport
/// What a handler knows about the call it is serving.
public struct CallContext: Sendable {
    /// The method the caller named.
    public let method: String
    /// The call's correlation id on its connection (0 for one-way messages).
    public let callID: UInt64
    /// When the caller stops waiting: the arrival time plus the time the caller allowed.
    /// The handler's task is cancelled at this instant. Reckoned on the
    /// connection's clock (``now``): the system's, or virtual time in tests.
    public let deadline: ContinuousClock.Instant?
    /// The time the caller allowed for the call, as it said in the frame.
    public var timeout: Duration? = nil
    /// The connection the call arrived on, so a handler can call back.
    public let peer: Peer
    /// Whether the caller asked for a stream (``Peer/stream(_:_:of:timeout:)``).
    var expectsStream = false
    /// Whether the caller sends an input stream (a client-streaming or bidirectional call).
    var sendsInput = false
    /// Whether the caller speaks JSON on this call (tools): a stream's items go to it as JSON.
    var jsonCaller = false
    /// Who called: the handshake's name and pid, and the kernel's credentials
    /// for a local socket (the same as `peer.remote`).
    public var remote: PeerIdentity { self.peer.remote }
    /// The caller's handshake name (``remote``'s ``PeerIdentity/name``).
    @available(*, deprecated, message: "use remote.name")
    public var peerName: String { self.peer.remote.name }
    /// The caller's process id as it reported it (``remote``'s ``PeerIdentity/reportedPID``).
    @available(*, deprecated, message: "use remote.reportedPID, or remote.credentials?.pid for the kernel's")
    public var peerPID: Int32 { self.peer.remote.reportedPID }
    /// Runs `action` once this call's reply (or error) has been queued on the
    /// connection — for a handler whose effect must not overtake its own answer,
    /// such as closing the connection or stopping the service.
    public func afterReply(_ action: @escaping @Sendable () async -> Void) {
        self.peer.afterReply(to: self.callID, action)
    }

    /// Time left before the deadline (`nil` when the message has none, zero when past).
    public var remainingTime: Duration? {
        guard let deadline else { return nil }
        return max(.zero, self.now.duration(to: deadline))
    }

    /// The current instant on the connection's clock: the system's monotonic
    /// clock, or an in-memory connection's virtual time.
    public var now: ContinuousClock.Instant { self.peer.transport.now }

    /// `true` for one-way messages, which get no reply.
    public var isOneWay: Bool { self.callID == 0 }
}

