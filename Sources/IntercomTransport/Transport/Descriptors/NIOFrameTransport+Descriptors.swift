#if os(Linux)
internal import IntercomWire
package import NIOCore

// Descriptors on a connection that stays on its Unix socket: the channel set up
// after the hellos (DescriptorChannelSetup), and frames sent with descriptors.
extension NIOFrameTransport {
    package var canOfferDescriptors: Bool { self.isUnixStreamSocket }

    package func beginDescriptorChannel(
        deadline: ContinuousClock.Instant, established: @escaping @Sendable () -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)? {
        guard let setup = DescriptorChannelSetup.offer(on: self) else { return nil }
        setup.start(socket: self, deadline: deadline) { result in
            switch result {
            case .success(let channel):
                self.outbox.withLock { $0.descriptorChannel = channel }
                established()
            case .failure(let error):
                failed(error)
            }
        }
        return setup
    }

    /// On the event loop: the descriptors of a flagged frame that just arrived.
    func receiveDescriptors() throws(ProtocolError) -> ReceivedDescriptors {
        guard let channel = self.outbox.withLock({ $0.descriptorChannel }) else {
            throw ProtocolError(.malformedHeader, "a frame flagged with descriptors on a connection that agreed to pass none")
        }
        return try channel.receive()
    }

    package var passesDescriptors: Bool { self.outbox.withLock { $0.descriptorChannel != nil } }

    package func send(_ bytes: ByteBuffer, descriptors: [Int32]) throws(IntercomError) {
        var refusal: IntercomError?
        self.enqueue(bytes, onlyIfWritable: false) { outbox in
            // Under the outbox lock: channel messages and flagged frames keep one order.
            guard let channel = outbox.descriptorChannel else {
                refusal = IntercomError(
                    .invalidPayload,
                    "descriptors cannot travel on this connection (\(self.medium)): it has no descriptor channel (the other side is not local, or predates them)")
                return false
            }
            do throws(IntercomError) {
                try channel.send(descriptors)
                return true
            } catch {
                refusal = error
                return false
            }
        }
        if let refusal { throw refusal }
    }
}
#endif
