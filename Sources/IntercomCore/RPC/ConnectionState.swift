public import IntercomTransport

/// Where a connection stands (epyrpc's connection-state listener): see
/// ``Peer/connectionStates()`` and `ServiceHandle.states`.
public enum ConnectionState: Sendable, Hashable {
    /// Looking for the other side and connecting to it.
    case connecting
    /// Connected to process `pid` (as it reported itself).
    case connected(pid: Int32)
    /// The connection ended without this side closing it.
    case lost(IntercomError)
    /// Connected again after a loss, to process `pid` (a restarted service is a new process).
    case reconnected(pid: Int32)
    /// This side closed it; nothing follows.
    case closed
}

extension Peer {
    /// This connection's states: `connected` at once, then `lost` (with why)
    /// or `closed` when it ends, after which the sequence finishes. A plain
    /// connection never comes back; a `ServiceHandle` reconnects (its `states`).
    public func connectionStates() -> AsyncStream<ConnectionState> {
        let (stream, continuation) = AsyncStream.makeStream(of: ConnectionState.self)
        continuation.yield(.connected(pid: self.remote.reportedPID))
        // Weakly: a state listener must not keep a connection nobody else holds.
        let ended: @Sendable () -> Void = { [weak self] in
            let reason = self?.withState { $0.endReason }
            if let reason, reason.code != .closed {
                continuation.yield(.lost(reason))
            } else {
                continuation.yield(.closed)
            }
            continuation.finish()
        }
        if !self.withState({ $0.addCloseWaiter(ended) }) { ended() }
        return stream
    }
}
