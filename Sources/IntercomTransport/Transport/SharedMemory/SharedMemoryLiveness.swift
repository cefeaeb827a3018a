#if os(Linux)
internal import IntercomWire

/// Receives from the socket of a connection that moved to shared memory: nothing
/// is expected there any more, so anything that arrives, and the end of the
/// stream, ends the shared-memory connection.
final class SharedMemoryLiveness: FrameReceiver, @unchecked Sendable {
    // Set once before the receiver is installed.
    weak var transport: SharedMemoryTransport?

    init(transport: SharedMemoryTransport) { self.transport = transport }

    func transportActive() {}
    func receive(_ frame: consuming Frame) { self.transport?.socketEnded() }
    func endOfReadBatch() {}
    func transportFailed(_ error: ProtocolError) { self.transport?.socketEnded() }
    func transportClosed() { self.transport?.socketEnded() }
    func transportWritable() {}
}
#endif
