internal import CIntercomShims
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
package import Darwin
#endif

/// Threads of Intercom's own (a listener's accept loop, a shared-memory
/// connection's loop), started with pthreads directly: Foundation's `Thread`
/// would link full Foundation and ICU into every program, ~12 MB resident.
package enum KernelThread {
    /// The closure a new thread runs, carried through pthread's `void *` argument.
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts a detached thread with the kernel name `name` (what top, perf and
    /// /proc show; at most 15 bytes are kept) that runs `body` and ends.
    ///
    /// - Throws: ``IntercomError`` `connectionFailed` if the system has no thread to give.
    package static func start(named name: String, _ body: @escaping @Sendable () -> Void) throws(IntercomError) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        let result = pthread_create(&thread, &attributes, { raw in
            #if canImport(Glibc)
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            #else
            let start = Unmanaged<Start>.fromOpaque(raw).takeRetainedValue()
            #endif
            start.name.withCString { c_intercom_name_this_thread($0) }
            start.body()
            return nil
        }, start)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw IntercomError(.connectionFailed, "cannot start thread \(name): \(String(cString: strerror(result)))")
        }
    }
}
