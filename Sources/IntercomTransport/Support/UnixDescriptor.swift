#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif
public import IntercomWire

/// A Unix file descriptor that travels inside a value: a call's argument, a
/// reply, a one-way message or a stream item (XPC's file descriptors, D-Bus's
/// `h`). Put one in any `Codable` type and send it over a local connection;
/// the kernel gives the receiver its own descriptor for the same open file
/// (`SCM_RIGHTS`).
///
/// ```swift
/// struct LogFile: Codable, Sendable { var name: String; var file: UnixDescriptor }
/// let log = try await peer.call("logs.open", "today", returning: LogFile.self)
/// let fd = log.file.take()           // yours now: read it, close it
/// ```
///
/// Ownership: a descriptor made with ``init(duplicating:)`` or
/// ``init(taking:)`` is this value's; sending it sends a duplicate, so the
/// value can be sent again. A received one is the receiver's: ``take()`` hands
/// it over, and a value dropped without `take()` closes it — so nothing leaks
/// when a reply is ignored or a payload fails to decode.
///
/// Descriptors travel only on connections between processes of one host
/// (socket pairs and Unix sockets, on shared memory or not); elsewhere — TCP,
/// TLS, an event — encoding one fails with a clear error before anything is
/// sent. At most ``maxPerFrame`` travel in one frame.
public final class UnixDescriptor: Codable, Sendable, CustomStringConvertible {
    /// The most descriptors one frame may carry.
    public static var maxPerFrame: Int { DescriptorAttachments.maxPerFrame }

    private let state: Locked<Int32>

    /// Owns `descriptor` from now on (closes it when dropped, unless taken).
    public init(taking descriptor: Int32) {
        self.state = Locked(descriptor)
    }

    /// Owns a close-on-exec duplicate of `descriptor`; the caller keeps its own.
    ///
    /// - Throws: `POSIXErrorCode` from `fcntl` (`EBADF` for a descriptor that is not open).
    public convenience init(duplicating descriptor: Int32) throws {
        let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw DescriptorError("cannot duplicate descriptor \(descriptor): errno \(errno)") }
        self.init(taking: copy)
    }

    deinit {
        let fd = self.state.withLock { $0 }
        if fd >= 0 { close(fd) }
    }

    /// The descriptor, still owned by this value (valid while it lives); -1 once taken.
    public var rawValue: Int32 { self.state.withLock { $0 } }

    /// Hands the descriptor over: the caller closes it; this value holds none
    /// any more (-1 if it was taken already).
    public func take() -> Int32 {
        self.state.withLock { fd in
            defer { fd = -1 }
            return fd
        }
    }

    /// `UnixDescriptor(fd 7)`.
    public var description: String { "UnixDescriptor(fd \(self.rawValue))" }

    /// Encodes its place among the frame's attached descriptors (the descriptor
    /// itself travels beside the payload).
    public func encode(to encoder: any Encoder) throws {
        guard let attachments = DescriptorAttachments.outgoing else {
            throw DescriptorError(
                "a UnixDescriptor can travel only in a call, reply, message or stream item on a local connection (not in events, not over TCP or TLS)",
                isMissingAttachments: true)
        }
        let fd = self.rawValue
        guard fd >= 0 else { throw DescriptorError("this UnixDescriptor was taken; it holds no descriptor to send") }
        guard let index = attachments.attach(fd) else {
            throw DescriptorError("a frame can carry at most \(Self.maxPerFrame) descriptors")
        }
        var container = encoder.singleValueContainer()
        try container.encode(index)
    }

    /// Takes its descriptor from the frame's attachments.
    public init(from decoder: any Decoder) throws {
        let index = try decoder.singleValueContainer().decode(UInt32.self)
        guard let received = DescriptorAttachments.incoming, let fd = received.take(Int(index)) else {
            throw DescriptorError("the payload names attached descriptor \(index), but the frame carries no such descriptor")
        }
        self.state = Locked(fd)
    }
}

/// Why a ``UnixDescriptor`` could not be encoded or decoded.
public struct DescriptorError: Error, CustomStringConvertible {
    /// What went wrong.
    public let description: String
    /// Encoding met a descriptor where none was expected: the sender retries
    /// with ``DescriptorAttachments/outgoing`` set, if the connection passes them.
    package let isMissingAttachments: Bool
    init(_ description: String, isMissingAttachments: Bool = false) {
        self.description = description
        self.isMissingAttachments = isMissingAttachments
    }
}


extension UnixDescriptor: WireSchemaDescribable {
    /// A descriptor: on the wire, its index among the frame's attachments.
    public static var wireSchema: TypeSchema { TypeSchema(.value(.primitive(.descriptor))) }
    /// A value holding no descriptor.
    public static var wireSchemaSample: UnixDescriptor { UnixDescriptor(taking: -1) }
}
