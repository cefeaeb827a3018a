#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif
internal import NIOConcurrencyHelpers

/// The descriptors of one frame being encoded (collected as its payload is
/// encoded) or decoded (taken as its payload is decoded), reachable from
/// `UnixDescriptor`'s `Codable` conformance while that happens.
public enum DescriptorAttachments {
    /// The most descriptors one frame may carry.
    public static let maxPerFrame = 16
    /// The frame being encoded where descriptors may go; nil where they may not.
    @TaskLocal public static var outgoing: OutgoingDescriptors?
    /// The descriptors of the frame being decoded.
    @TaskLocal public static var incoming: ReceivedDescriptors?
}

/// Descriptors attached to a frame being encoded: not owned (the values that
/// own them live until the frame is sent).
public final class OutgoingDescriptors: @unchecked Sendable {
    // Used by one encoding task at a time (a task-local).
    public private(set) var descriptors: [Int32] = []

    /// An empty list.
    public init() {}

    /// Attaches `fd`; returns its index among the frame's descriptors (nil:
    /// the frame has ``DescriptorAttachments/maxPerFrame`` already).
    public func attach(_ fd: Int32) -> UInt32? {
        guard self.descriptors.count < DescriptorAttachments.maxPerFrame else { return nil }
        self.descriptors.append(fd)
        return UInt32(self.descriptors.count - 1)
    }
}

/// Descriptors that arrived with a frame, owned until a decoded
/// `UnixDescriptor` takes one; those never taken are closed when the frame is dropped.
public final class ReceivedDescriptors: Sendable {
    // A pthread mutex (not `Synchronization.Mutex`, whose futex ThreadSanitizer does not model).
    private let descriptors: NIOLockedValueBox<[Int32]>

    /// Owns `descriptors`.
    public init(_ descriptors: [Int32]) { self.descriptors = NIOLockedValueBox(descriptors) }

    /// How many arrived (taken or not).
    public var count: Int { self.descriptors.withLockedValue { $0.count } }

    /// Takes descriptor `index` (nil if there is none, or it was taken).
    public func take(_ index: Int) -> Int32? {
        self.descriptors.withLockedValue { list in
            guard list.indices.contains(index), list[index] >= 0 else { return nil }
            defer { list[index] = -1 }
            return list[index]
        }
    }

    deinit {
        for fd in self.descriptors.withLockedValue({ $0 }) where fd >= 0 { close(fd) }
    }
}
