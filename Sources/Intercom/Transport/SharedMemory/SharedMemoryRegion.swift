#if os(Linux)
internal import Glibc

/// An anonymous shared-memory file (memfd, 0600 by construction, never in a
/// directory, so nothing is left behind in /dev/shm) mapped into this process.
/// The other process maps the same file from its descriptor.
package final class SharedMemoryRegion: @unchecked Sendable {
    // Immutable after init; the mapped bytes are shared state guarded by the
    // ring protocol that uses them.
    package let fd: Int32
    package let base: UnsafeMutableRawPointer
    package let size: Int

    /// Creates a new region of `size` bytes (zero-filled).
    package convenience init(creating size: Int, name: String = "intercom-ring") throws(IntercomError) {
        typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>, UInt32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") else {
            throw IntercomError(.connectionFailed, "memfd_create is not available on this system")
        }
        let memfdCreate = unsafeBitCast(symbol, to: MemfdCreate.self)
        let fd = name.withCString { memfdCreate($0, 1 /* MFD_CLOEXEC */) }
        guard fd >= 0 else {
            throw IntercomError(.connectionFailed, "memfd_create failed: \(String(cString: strerror(errno)))")
        }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw IntercomError(.connectionFailed, "cannot size the shared memory to \(size) bytes: \(message)")
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

    deinit {
        munmap(self.base, self.size)
        close(self.fd)
    }
}

/// Linux futex wait/wake on a 32-bit word in shared memory (not the private
/// variant: the other waiter is another process).
enum Futex {
    private typealias Syscall = @convention(c) (
        Int, UnsafeMutableRawPointer, Int32, UInt32, UnsafeRawPointer?, UnsafeRawPointer?, UInt32
    ) -> Int
    // `syscall` is variadic in C; its integer and pointer arguments are passed the
    // same way as by this fixed-arity prototype.
    private static let syscall: Syscall? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syscall").map {
        unsafeBitCast($0, to: Syscall.self)
    }
    #if arch(x86_64)
    private static let number = 202
    #else
    private static let number = 98
    #endif

    /// Sleeps while `*word == expected`, at most `timeout`; returns at once if it differs.
    static func wait(_ word: UnsafeMutableRawPointer, expected: UInt32, timeout: Duration) {
        var spec = timespec(
            tv_sec: Int(timeout.components.seconds), tv_nsec: Int(timeout.components.attoseconds / 1_000_000_000))
        _ = withUnsafePointer(to: &spec) { spec in
            Self.syscall?(Self.number, word, 0 /* FUTEX_WAIT */, expected, UnsafeRawPointer(spec), nil, 0)
        }
    }

    /// Wakes every process sleeping on `word`.
    static func wake(_ word: UnsafeMutableRawPointer) {
        _ = Self.syscall?(Self.number, word, 1 /* FUTEX_WAKE */, UInt32(Int32.max), nil, nil, 0)
    }
}
#endif
