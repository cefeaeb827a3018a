internal import CIntercomShims

/// Hands memory that large requests used back to the system once their
/// connection is gone.
///
/// glibc's malloc raises its mmap threshold after large blocks are freed (up to
/// 32 MiB), so the megabyte-sized buffers of a connection's big calls end up in
/// its heaps and stay resident after they are freed: a service that once served
/// a burst of large calls would keep that much memory for the rest of its life.
/// `malloc_trim` returns the free pages of every heap.
package enum ReleasedMemory {
    /// A connection that held at least this many bytes of requests hands its
    /// memory back when it ends (smaller ones leave nothing worth the trim).
    package static let threshold = 4 << 20

    package static func handBack() {
        _ = c_intercom_malloc_trim(0)
    }
}
