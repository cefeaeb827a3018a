/// The kind of a frame: the fourth byte of every frame header.
///
/// A struct with static members rather than an enum, so that kinds can be added
/// without breaking users (CONVENTIONS.md §8). Unknown kinds are refused by the
/// decoder with ``ProtocolError/Code/unknownFrameKind``.
///
/// The kinds are inlinable constants: a `switch` over them on the receive path
/// compares bytes instead of calling a lazy global's accessor per case.
public struct FrameKind: Hashable, Sendable, CustomStringConvertible {
    /// The byte on the wire.
    public let rawValue: UInt8

    /// Wraps a raw kind byte; returns `nil` for a byte that names no kind.
    public init?(rawValue: UInt8) {
        guard (1...17).contains(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    @usableFromInline init(_ raw: UInt8) { self.rawValue = raw }

    /// Opens a connection: versions, name, pid, codec, limits. Sent by both sides.
    @inlinable public static var hello: FrameKind { FrameKind(1) }
    /// Reserved for asymmetric handshakes (accepting side's answer); not sent in version 1.
    @inlinable public static var welcome: FrameKind { FrameKind(2) }
    /// A request that expects a reply or an error with the same id.
    @inlinable public static var call: FrameKind { FrameKind(3) }
    /// The successful answer to the call with the same id.
    @inlinable public static var reply: FrameKind { FrameKind(4) }
    /// The failed answer to the call with the same id (or id 0: a connection-level error).
    @inlinable public static var error: FrameKind { FrameKind(5) }
    /// Asks the peer to cancel the call with the same id.
    @inlinable public static var cancel: FrameKind { FrameKind(6) }
    /// A one-way message: no reply.
    @inlinable public static var message: FrameKind { FrameKind(7) }
    /// An event published on a topic.
    @inlinable public static var event: FrameKind { FrameKind(8) }
    /// Asks the peer to send events of a topic.
    @inlinable public static var subscribe: FrameKind { FrameKind(9) }
    /// Stops a subscription.
    @inlinable public static var unsubscribe: FrameKind { FrameKind(10) }
    /// Liveness probe; answered with ``pong`` carrying the same id.
    @inlinable public static var ping: FrameKind { FrameKind(11) }
    /// Answer to ``ping``.
    @inlinable public static var pong: FrameKind { FrameKind(12) }
    /// The sender is closing the connection on purpose.
    @inlinable public static var goodbye: FrameKind { FrameKind(13) }
    /// The shared-memory upgrade right after the hellos (id 1: ready for
    /// descriptors; id 2: a ring's memfd is attached). See docs/PROTOCOL.md.
    @inlinable public static var sharedMemory: FrameKind { FrameKind(14) }
    /// One item of the stream answering the call with the same id (before its
    /// `reply`, which ends the stream, or `error`).
    @inlinable public static var streamItem: FrameKind { FrameKind(15) }
    /// The receiver of a stream grants the producer more items (a u32 count in
    /// the payload) for the call with the same id.
    @inlinable public static var credit: FrameKind { FrameKind(16) }
    /// The caller of the call with the same id sends no more items of its input
    /// stream (empty payload).
    @inlinable public static var streamEnd: FrameKind { FrameKind(17) }

    /// The kind's name.
    public var description: String {
        let names = [
            "", "hello", "welcome", "call", "reply", "error", "cancel", "message", "event",
            "subscribe", "unsubscribe", "ping", "pong", "goodbye", "sharedMemory", "streamItem", "credit",
            "streamEnd",
        ]
        return Int(self.rawValue) < names.count ? names[Int(self.rawValue)] : "kind(\(self.rawValue))"
    }
}
