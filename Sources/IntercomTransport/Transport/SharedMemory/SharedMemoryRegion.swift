#if os(Linux)
internal import CIntercomShims
internal import Glibc

/// An anonymous shared-memory file (memfd, 0600 by construction, never in a
/// directory, so nothing is left behind in /dev/shm) mapped into this process.
/// The other process maps the same file from its descriptor.
package final class SharedMemoryRegion: @unchecked Sendable {
    // Immutable after init; the mapped bytes are shared state guarded by the
    // ring protocol that uses them.
    /// The memfd; -1 once ``closeDescriptor()`` was called (the mapping stays).
    package private(set) var fd: Int32
    package let base: UnsafeMutableRawPointer
    package let size: Int

    /// Creates a new region of `size` bytes (zero-filled).
    package convenience init(creating size: Int, name: String = "intercom-ring") throws(IntercomError) {
        let fd = name.withCString { c_intercom_memfd_create_sealable($0) }
        guard fd >= 0 else {
            throw IntercomError(.connectionFailed, "memfd_create failed: \(String(cString: strerror(errno)))")
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw IntercomError(.connectionFailed, "cannot size the shared memory to \(size) bytes: \(message)")
        }
        // Sealed at its size: the other process can neither shrink the file under
        // our mapping (a SIGBUS on the next access) nor grow it.
        guard fcntl(fd, Self.addSeals, Self.sizeSeals | 1 /* F_SEAL_SEAL */) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw IntercomError(.connectionFailed, "cannot seal the shared memory: \(message)")
        }
        try self.init(mapping: fd, size: size)
    }

    private static let addSeals: Int32 = 1033  // F_ADD_SEALS
    private static let getSeals: Int32 = 1034  // F_GET_SEALS
    private static let sizeSeals: Int32 = 2 | 4  // F_SEAL_SHRINK | F_SEAL_GROW

    /// Maps a region another process created and sent: refuses one whose size is
    /// not sealed (it could shrink the file and crash this process with SIGBUS) or
    /// that is smaller than announced. Takes ownership of `fd`.
    package convenience init(receiving fd: Int32, size: Int) throws(IntercomError) {
        let seals = fcntl(fd, Self.getSeals)
        guard seals >= 0, seals & Self.sizeSeals == Self.sizeSeals else {
            close(fd)
            throw IntercomError(.protocolViolation, "the shared memory offered by the other side is not sealed against resizing")
        }
        try self.init(mapping: fd, size: size)
    }

    /// Maps an existing region (received from the other process); takes ownership of `fd`.
    package init(mapping fd: Int32, size: Int) throws(IntercomError) {
        var info = stat()
        guard fstat(fd, &info) == 0, Int(info.st_size) >= size else {
            close(fd)
            throw IntercomError(.protocolViolation, "the shared memory is smaller than the \(size) bytes announced")
        }
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw IntercomError(.connectionFailed, "cannot map the shared memory: \(message)")
        }
        self.fd = fd
        self.base = base
        self.size = size
    }

    /// Closes the descriptor once nothing more needs it (it was sent or the
    /// region mapped); the memory stays mapped until this object goes away.
    package func closeDescriptor() {
        if self.fd >= 0 { close(self.fd) }
        self.fd = -1
    }

    deinit {
        munmap(self.base, self.size)
        if self.fd >= 0 { close(self.fd) }
    }
}

/// Linux futex wait/wake on a 32-bit word in shared memory (not the private
/// variant: the other waiter is another process).
enum Futex {
    /// Sleeps while `*word == expected`, at most `timeout`; returns at once if it differs.
    static func wait(_ word: UnsafeMutableRawPointer, expected: UInt32, timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        _ = c_intercom_futex_wait(
            word.assumingMemoryBound(to: UInt32.self), expected, Int(seconds), Int(attoseconds / 1_000_000_000))
    }

    /// Wakes every process sleeping on `word`.
    static func wake(_ word: UnsafeMutableRawPointer) {
        _ = c_intercom_futex_wake_all(word.assumingMemoryBound(to: UInt32.self))
    }
}
#endif
