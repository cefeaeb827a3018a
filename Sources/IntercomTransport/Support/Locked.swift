#if canImport(Glibc)
public import Glibc
#elseif canImport(Darwin)
public import Darwin
#endif

/// A value behind a lock: the one lock type of the package.
///
/// Why not `Synchronization.Mutex`: on Linux it locks with futex system calls
/// that ThreadSanitizer does not model, so every value it guards reads as a data
/// race (33 reports in the suite, all false: a 10-line program with one
/// `Mutex<Int>` shows the same) and the sanitizer battery cannot run. This type
/// locks a `pthread_mutex_t`, which the sanitizers intercept, and costs about
/// the same uncontended.
///
/// The value and the mutex live in one `ManagedBuffer` allocation and are
/// reached through pointers, so taking the lock touches no class stored
/// property (no runtime exclusivity check on the hot path).
///
/// Why `@_spi` public and not `package`: the layers above must inline and
/// specialize `withLock`, and this toolchain serializes the body of an
/// inlinable `package` declaration only with package cross-module optimization
/// (an unsafe flag SwiftPM refuses in dependencies). Unspecialized, every call
/// went through value witnesses of the guarded type and of the closure's
/// result. Users never see it unless they import the SPI, which is no promise.
@_spi(IntercomInternals)
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: the value is only ever touched with the mutex held.
    @usableFromInline
    final class Storage: ManagedBuffer<Value, pthread_mutex_t> {
        // The header (the value) is destroyed by ManagedBuffer; the element is ours.
        deinit {
            _ = self.withUnsafeMutablePointerToElements { mutex in pthread_mutex_destroy(mutex) }
        }
    }

    @usableFromInline
    let storage: Storage

    /// A lock around `value`.
    public init(_ value: Value) {
        let buffer = Storage.create(minimumCapacity: 1) { _ in value }
        let storage = unsafeDowncast(buffer, to: Storage.self)
        storage.withUnsafeMutablePointerToElements { mutex in
            mutex.initialize(to: pthread_mutex_t())
            let result = pthread_mutex_init(mutex, nil)
            precondition(result == 0, "pthread_mutex_init failed: \(result)")
        }
        self.storage = storage
    }

    /// Runs `body` with the value, the lock held. Never call back into code
    /// that may take the same lock, and never suspend inside.
    @inlinable @inline(__always)
    public func withLock<Result, Failure: Error>(
        _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try self.storage.withUnsafeMutablePointers { (value, mutex) throws(Failure) -> Result in
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            return try body(&value.pointee)
        }
    }
}
