@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import Logging

// A service that suspends to restart on purpose (IPC::Manager's suspend): it
// tells its clients with a `goodbye` of id 1; each stops calling and closes
// once its own calls are answered, so no call is lost between two instances.
extension Peer {
    /// The other side said it suspends: refuse calls from now on (with
    /// `suspended`: they never left, so they may be made again elsewhere), and
    /// close once every call already made is answered.
    func suspensionArrived() {
        let name = self.remote.name
        let refusal = IntercomError(
            .suspended, "'\(name)' is suspended (restarting on purpose); the call was not sent to it",
            context: .init(peer: name))
        guard self.withState({ $0.suspensionArrived(refusal) }) else { return }
        self.logger.debug("the other side suspends; closing once this side's calls are answered")
        let closeWhenDrained: OutboundCalls.DrainWaiter = { [weak self] _ in
            guard let self else { return }
            Task {
                await self.close(
                    reason: IntercomError(.suspended, "'\(name)' suspended; this side closed the connection once its calls were answered"))
            }
        }
        if self.withState({ $0.addDrainWaiter(closeWhenDrained) }) == nil { closeWhenDrained(true) }
    }

    /// Tells the other side that this side suspends (``IntercomError/Code/suspended``).
    ///
    /// - Returns: whether it will close the connection by itself once its calls
    ///   are answered (it said so in its hello); if not, close it yourself.
    package func announceSuspension() -> Bool {
        guard self.remoteSupportsSuspend, !self.isClosed else { return false }
        self.transmit(FrameHeader.empty(kind: .goodbye, id: Hello.suspendingGoodbyeID))
        return true
    }

    /// Whether the other side said it suspends: calls on this connection are
    /// refused with ``IntercomError/Code/suspended``, and it closes once the
    /// calls made before are answered.
    public var otherSideSuspends: Bool { self.withState { $0.otherSideSuspends } }
}
