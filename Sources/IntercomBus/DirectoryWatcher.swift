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
    /// Where every watcher's read source and timer run: their handlers only
    /// cancel the source and drain the descriptor.
    private static let queue = DispatchQueue(label: "intercom.directory-watcher")

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

    /// Returns after a change in the directory, after `limit` (at most 100 ms: a
    /// backstop, since a crashed lock holder's release shows only as the close of
    /// a read-only descriptor, which is not watched — see `NameLock`), or
    /// when the task is cancelled, whichever is first. Without inotify, returns
    /// after at most 20 ms.
    ///
    /// Driven by events: the inotify descriptor is watched by a dispatch read
    /// source (epoll underneath), so no thread blocks while nothing changes.
    func waitForChange(upTo limit: Duration) async {
        guard self.fd >= 0 else {
            try? await Task.sleep(for: min(limit, .milliseconds(20)))
            return
        }
        let fd = self.fd
        let queue = Self.queue
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let timer = DispatchWorkItem { source.cancel() }
                source.setEventHandler { source.cancel() }
                // Runs once, after the source let go of the descriptor: only then may
                // the wait end (and the watcher, with its descriptor, go away).
                source.setCancelHandler {
                    timer.cancel()
                    var scratch = [UInt8](repeating: 0, count: 4096)
                    while scratch.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
                    continuation.resume()
                }
                queue.asyncAfter(deadline: .after(min(limit, .milliseconds(100))), execute: timer)
                source.resume()
            }
        } onCancel: { [cancel = CancelSource(source)] in
            cancel.source.cancel()
        }
    }
}

/// Lets the cancellation handler (a `@Sendable` closure) cancel the read source:
/// `DispatchSource.cancel()` may be called from any thread, though the type is not
/// marked `Sendable`.
private final class CancelSource: @unchecked Sendable {
    let source: any DispatchSourceRead
    init(_ source: any DispatchSourceRead) { self.source = source }
}
