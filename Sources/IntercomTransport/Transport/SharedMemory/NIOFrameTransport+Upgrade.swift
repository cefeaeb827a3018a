#if os(Linux)
package import IntercomWire
package import Logging
internal import NIOCore

// A Unix stream socket moves to shared-memory rings: the transport side of the
// handshake's upgrade (the steps are in SharedMemoryUpgrade).
extension NIOFrameTransport {
    package func canOfferUpgrade(_ options: SharedMemoryOptions) -> Bool {
        options.isEnabled && self.isUnixStreamSocket
    }

    package func beginUpgrade(
        options: SharedMemoryOptions, passDescriptors: Bool, deadline: ContinuousClock.Instant, limits: WireLimits, logger: Logger,
        established: @escaping @Sendable (_ newTransport: any FrameTransport) -> @Sendable (TransportHandover) -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)? {
        // The upgrade writes the socket outside the outbox (the ready frame, the
        // rings' descriptors), and afterwards the socket only tells of liveness.
        self.turnOffDirectWrites()
        guard let upgrade = SharedMemoryUpgrade.offer(on: self, options: options, passDescriptors: passDescriptors) else { return nil }
        upgrade.start(
            socket: self, deadline: deadline, limits: limits, logger: logger,
            established: { shm in
                // On the new transport's thread, before it serves the connection.
                let finish = established(shm)
                self.executeOnLoop {
                    finish(
                        TransportHandover(
                            newTransport: shm,
                            complete: { socketEnded in
                                self.setReceiver(SharedMemoryLiveness(transport: shm))
                                self.setReadingPaused(false, reason: .upgrade)
                                if socketEnded || !self.channel.isActive { shm.socketEnded() }
                            }))
                }
            },
            failed: { error in
                self.executeOnLoop { failed(error) }
            })
        return upgrade
    }
}

extension SharedMemoryUpgrade: TransportUpgrade {
    func remoteReadyArrived() { self.remoteReady = true }
}
#endif
