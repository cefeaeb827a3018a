package import IntercomWire
package import NIOCore
package import Logging

/// What the RPC layer needs from a byte stream that carries frames.
///
/// Deliberately free of NIO channel types (only `ByteBuffer`, the wire module's
/// byte type, appears), so that a shared-memory ring can be a peer of the
/// sockets rather than a special case. All receiver callbacks of one transport
/// arrive in order on one thread, the one ``executor`` runs jobs on.
package protocol FrameTransport: AnyObject, Sendable {
    /// Runs jobs on the thread that delivers this transport's frames; tasks that
    /// prefer it talk to the connection without a thread hop.
    var executor: any TaskExecutor { get }
    /// Whether the caller runs on the thread that serves this transport (blocking
    /// it there would stop the transport itself).
    var isOnTransportThread: Bool { get }
    /// Whether the frames travel through shared memory rather than a socket.
    /// What carries the frames (for diagnostics: nothing above the transports
    /// behaves differently by medium).
    var medium: TransportMedium { get }
    /// The kernel's credentials of the process at the other end, for a local
    /// socket made by connecting or accepting (nil for socket pairs — whose
    /// credentials are their creator's, not the other end's — and for transports
    /// without a kernel).
    var peerCredentials: KernelCredentials? { get }

    /// Sets who receives frames and the end of the stream; the first call also
    /// starts reading. Call from the transport's thread, or before the first read.
    func setReceiver(_ receiver: any FrameReceiver)

    /// Queues bytes (whole frames) for sending and returns at once. Frames queued
    /// from one thread go out in order; bytes queued after close are dropped.
    func send(_ bytes: ByteBuffer)

    /// Queues bytes like ``send(_:)`` if the outbound buffer is below its high
    /// watermark; otherwise queues nothing and returns `false` (the caller waits in
    /// ``waitUntilWritable()`` and sends then). One lock for the common case.
    func sendIfWritable(_ bytes: ByteBuffer) -> Bool

    /// Returns when the outbound buffer is below its high watermark.
    ///
    /// - Throws: ``IntercomError`` `closed`/`peerLost` when the stream ended,
    ///   `cancelled` when the waiting task is cancelled.
    func waitUntilWritable() async throws(IntercomError)

    /// How many tasks wait in ``waitUntilWritable()`` now.
    var blockedSenders: Int { get }

    /// Pauses or resumes reading for one reason; reading resumes when no reason remains.
    func setReadingPaused(_ paused: Bool, reason: ReadPauseReason)

    /// Runs `body` on the transport's thread after `delay`, unless cancelled first.
    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> any ScheduledWork

    /// The memory this side writes frames into when the other side reads it
    /// directly (a shared-memory ring), for tests that play a hostile peer.
    var outboundMemoryForTesting: UnsafeMutableRawBufferPointer? { get }

    /// Whether this side can offer to move the connection to another transport
    /// in its hello (the shared-memory capability): a Unix stream socket whose
    /// descriptor is known, with shared memory enabled.
    func canOfferUpgrade(_ options: SharedMemoryOptions) -> Bool

    /// Starts moving the connection once both hellos offered it (with a
    /// descriptor channel if both said they pass descriptors); nil if this side
    /// cannot after all (out of descriptors or memory). `established` runs on the
    /// new transport's thread before it serves anything (make the receiver there)
    /// and returns what to run on this transport's thread with the handover;
    /// `failed` runs on this transport's thread.
    func beginUpgrade(
        options: SharedMemoryOptions, passDescriptors: Bool, deadline: ContinuousClock.Instant, limits: WireLimits, logger: Logger,
        established: @escaping @Sendable (_ newTransport: any FrameTransport) -> @Sendable (TransportHandover) -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)?

    /// Whether frames can carry descriptors (``send(_:descriptors:)``): a local
    /// connection with a descriptor channel (set up by the shared-memory upgrade,
    /// or by ``beginDescriptorChannel(deadline:established:failed:)``).
    var passesDescriptors: Bool { get }

    /// Whether this side can offer to pass descriptors in its hello: a Unix
    /// stream socket whose descriptor is known.
    var canOfferDescriptors: Bool { get }

    /// Starts giving a connection that stays on this transport a descriptor
    /// channel, once both hellos offered descriptors but not both shared memory;
    /// nil if this side cannot (then it must refuse the connection). Exactly one
    /// of `established` and `failed` runs, on this transport's thread, reading resumed if established.
    func beginDescriptorChannel(
        deadline: ContinuousClock.Instant, established: @escaping @Sendable () -> Void,
        failed: @escaping @Sendable (IntercomError) -> Void
    ) -> (any TransportUpgrade)?

    /// Queues one frame (flagged `descriptors`) like ``send(_:)``, its descriptors
    /// sent beside it first, in order with every other send. Does not block.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` where descriptors cannot
    ///   travel, `busy` when the other side holds too many unread, `closed`.
    func send(_ bytes: ByteBuffer, descriptors: [Int32]) throws(IntercomError)

    /// Calls `observer` (with no lock held) whenever a sender starts or stops
    /// waiting for room (``blockedSenders`` changed). Set once, by the peer.
    func observeBlockedSenders(_ observer: @escaping @Sendable () -> Void)

    /// The transport's clock, which ``schedule(after:_:)`` runs on: the system's
    /// monotonic clock, or virtual time on an in-memory transport. Deadlines of
    /// calls and handlers are reckoned on it.
    var now: ContinuousClock.Instant { get }

    /// Flushes what was queued and closes the stream.
    func close()
}

extension FrameTransport {
    package var now: ContinuousClock.Instant { .now }
}

/// Why reading from a transport is paused; reading resumes when no reason is left.
package struct ReadPauseReason: OptionSet, Sendable {
    package let rawValue: UInt8
    package init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The unsolicited-message inbox is full.
    package static let inboxFull = ReadPauseReason(rawValue: 1)
    /// The queue of calls waiting for a free handler slot is full.
    package static let callQueueFull = ReadPauseReason(rawValue: 2)
    /// The connection is moving to shared memory; the socket must not be read.
    static let upgrade = ReadPauseReason(rawValue: 4)
    /// The peer broke the protocol; the connection is closing and reads nothing more.
    package static let violation = ReadPauseReason(rawValue: 8)
}

/// A scheduled piece of work that can still be called off.
package protocol ScheduledWork: Sendable {
    /// Calls the work off if it has not run yet.
    func cancel()
}

/// Receives what a ``FrameTransport`` reads. Called on the transport's thread, in order.
package protocol FrameReceiver: AnyObject, Sendable {
    /// The stream is open and writable: the handshake may begin.
    func transportActive()
    /// One whole frame arrived.
    func receive(_ frame: consuming Frame)
    /// The frames of one read have all been delivered (a good moment to publish
    /// what was collected from them in one go).
    func endOfReadBatch()
    /// The bytes broke the protocol; the transport closes itself after this call.
    func transportFailed(_ error: ProtocolError)
    /// The stream ended (the other side closed it, died, or this side closed it).
    func transportClosed()
    /// The outbound buffer drained below its low watermark after being full.
    func transportWritable()
}
