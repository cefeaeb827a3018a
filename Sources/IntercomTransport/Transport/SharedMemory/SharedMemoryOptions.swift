#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif

/// How a connection uses shared memory.
///
/// A connection over a Unix socket or socket pair moves, right after the
/// handshake, onto two shared-memory rings when both sides allow it: the same
/// calls, messages and events, without a system call per frame. Each such
/// connection has a thread of its own that spins briefly when idle and then
/// sleeps on a futex. Switch it off for one connection with
/// `configuration.sharedMemory.isEnabled = false`, or for a whole process with
/// the environment variable `INTERCOM_SHARED_MEMORY=off`.
public struct SharedMemoryOptions: Sendable {
    /// Whether this side offers (and accepts) the move to shared memory: true on
    /// Linux unless `INTERCOM_SHARED_MEMORY` is `off`, `0`, `false` or `no`.
    public var isEnabled: Bool
    /// Bytes in the ring of each direction: 1 MiB (rounded up to a power of two,
    /// 4 KiB to 256 MiB). Frames larger than a ring pass through it in pieces.
    public var ringCapacity: Int = 1 << 20
    /// How long the connection's thread keeps checking for work after its last
    /// frame before it sleeps on a futex: 50 µs. Longer lowers the latency of
    /// sparse calls and costs that much CPU after each burst; zero sleeps at once.
    public var spinDuration: Duration = .microseconds(50)
    /// Bytes of this side's buffer pool for large frames: 32 MiB (in blocks of
    /// 64 KiB, at most 1 GiB; 0 for none). A frame of 64 KiB or more is copied
    /// once into free blocks instead of through the ring, and the other side reads
    /// it in place: a `ByteBuffer` or raw-bytes payload it receives is a view of
    /// the shared blocks, which return to the pool when the last view goes away.
    /// A frame larger than the pool, or one sent while the pool is full, goes
    /// through the ring. The pool's memory is reserved, not used: only the pages
    /// large frames touched are.
    public var bufferPoolSize: Int = 32 << 20

    /// The defaults (enabled unless switched off for the process).
    public init() {
        #if os(Linux)
        let setting = ProcessInfo.processInfo.environment["INTERCOM_SHARED_MEMORY"]?.lowercased()
        self.isEnabled = !["off", "0", "false", "no"].contains(setting ?? "")
        #else
        self.isEnabled = false
        #endif
    }
}
