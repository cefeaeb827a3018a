package import Logging
package import IntercomWire
package import NIOCore

/// An upgrade under way: the connection moving from one transport to another
/// after both hellos offered it (today: a Unix socket moving to shared-memory
/// rings, see `SharedMemoryUpgrade`). The handshake drives it through this
/// protocol and ``FrameTransport/beginUpgrade(options:deadline:limits:logger:established:failed:)``
/// only; which transports can upgrade, and how, is the transports' business.
package protocol TransportUpgrade: AnyObject, Sendable {
    /// The other side's "ready" came through the old transport, before reading
    /// moved to the upgrade (on the old transport's thread).
    func remoteReadyArrived()
}

/// Handed to the handshake on the old transport's thread once the new transport
/// is ready: the handshake finishes (or gives up on) the connection, then calls
/// ``complete(oldTransportEnded:)`` if it keeps it.
package struct TransportHandover: Sendable {
    /// Where the connection continues.
    package let newTransport: any FrameTransport
    /// Makes the old transport the new one's liveness watch (its end is how each
    /// side learns the other is gone) and resumes it. `oldTransportEnded`: the old
    /// transport reported its end during the upgrade.
    package let complete: @Sendable (_ oldTransportEnded: Bool) -> Void
}

extension FrameTransport {
    /// For tests that play a hostile peer: the memory this side writes frames
    /// into when the other side reads it directly (a shared-memory ring); nil by default.
    package var outboundMemoryForTesting: UnsafeMutableRawBufferPointer? { nil }

    /// By default a transport cannot upgrade.
    package func canOfferUpgrade(_ options: SharedMemoryOptions) -> Bool { false }

    /// By default a transport passes no descriptors.
    package var passesDescriptors: Bool { false }

    /// By default a transport offers no descriptors.
    package var canOfferDescriptors: Bool { false }

    /// By default a transport cannot set up a descriptor channel: nil.
    package func beginDescriptorChannel(
        deadline: ContinuousClock.Instant, established: @escaping @Sendable () -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)? { nil }

    /// By default a transport passes no descriptors: refused, nothing sent.
    package func send(_ bytes: ByteBuffer, descriptors: [Int32]) throws(IntercomError) {
        throw IntercomError(
            .invalidPayload,
            "descriptors cannot travel on this connection (\(self.medium)): only between processes of one host (socket pairs and Unix sockets)")
    }

    /// By default a transport cannot upgrade: nil.
    package func beginUpgrade(
        options: SharedMemoryOptions, passDescriptors: Bool, deadline: ContinuousClock.Instant, limits: WireLimits, logger: Logger,
        established: @escaping @Sendable (_ newTransport: any FrameTransport) -> @Sendable (TransportHandover) -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)? { nil }
}
