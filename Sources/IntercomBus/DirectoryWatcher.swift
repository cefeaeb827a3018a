internal import IntercomTransport
internal import IntercomCore
internal import Dispatch
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Wakes a waiter when something in a directory changes: inotify on Linux,
/// a short polling interval elsewhere. Waiters re-check what they wait for after
/// every wake-up, so a spurious wake-up costs a check, never a wrong answer.
final class DirectoryWatcher: Sendable {
    private let fd: Int32

    /// Starts watching `path`. Create the watcher *before* the first check, so a
    /// change between the check and the wait is not missed.
    init(path: String) {
        #if os(Linux)
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        if fd >= 0 {
            let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_CLOSE_WRITE | IN_ATTRIB)
            if inotify_add_watch(fd, path, mask) < 0 {
                close(fd)
                self.fd = -1
                return
            }
        }
        self.fd = fd
        #else
        self.fd = -1
        #endif
    }

    deinit {
        if self.fd >= 0 { close(self.fd) }
    }

    /// Returns after a change in the directory, or after `limit`, whichever is first.
    /// Without inotify, returns after at most 20 ms.
    func waitForChange(upTo limit: Duration) async {
        let milliseconds = max(1, min(Int32(clamping: limit.components.seconds * 1000 + limit.components.attoseconds / 1_000_000_000_000_000), 100))
        guard self.fd >= 0 else {
            try? await Task.sleep(for: .milliseconds(min(20, Int(milliseconds))))
            return
        }
        let fd = self.fd
        // poll() blocks, so it runs on a dispatch thread; slices of ≤ 100 ms let a
        // cancelled waiter go soon after.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&entry, 1, milliseconds)
                var scratch = [UInt8](repeating: 0, count: 4096)
                while scratch.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
                continuation.resume()
            }
        }
    }
}
