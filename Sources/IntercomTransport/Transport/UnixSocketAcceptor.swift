internal import CIntercomShims
package import Logging
internal import Synchronization
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
package import Darwin
#endif

/// Accepts connections on a listening Unix socket on a thread of its own and
/// hands each new descriptor to `accepted`.
///
/// Intercom accepts itself (rather than through NIO's server channel) so that it
/// knows every connection's descriptor: nothing per connection has to search for
/// it, so accepting costs the same with 10 or 10,000 open connections.
///
/// When the process runs out of descriptors (`EMFILE`, `ENFILE`) or kernel
/// memory, a failing `accept` would return at once forever; the acceptor instead
/// pauses accepting for ``backoff`` and tries again, while the connections
/// already open keep being served on their event loops.
package final class UnixSocketAcceptor: Sendable {
    /// How long accepting pauses after the process ran out of descriptors.
    static let backoff: Duration = .milliseconds(100)
    private static let backoffMilliseconds: Int32 = 100

    private let listening: Int32
    /// Written to wake the thread up for ``stop()``: [read end, write end].
    private let wake: (Int32, Int32)
    private let state = Locked(State())

    private struct State {
        var stopped = false
        var finished = false
        var finishWaiters: [UnsafeContinuation<Void, Never>] = []
    }

    /// Starts accepting on `listening` (a bound, listening, non-blocking socket the
    /// acceptor now owns).
    package init(
        listening: Int32, path: String, logger: Logger, accepted: @escaping @Sendable (Int32) -> Void
    ) throws(IntercomError) {
        var pipeEnds: [Int32] = [-1, -1]
        // Close-on-exec from the start: a child spawned meanwhile never inherits it.
        guard c_intercom_pipe_cloexec(&pipeEnds) == 0 else {
            throw IntercomError(.connectionFailed, "cannot make a wake-up pipe: \(String(cString: strerror(errno)))")
        }
        self.listening = listening
        self.wake = (pipeEnds[0], pipeEnds[1])
        do {
            try KernelThread.start(named: "intercom-accept") { [self] in
                self.run(path: path, logger: logger, accepted: accepted)
            }
        } catch {
            POSIX.close(pipeEnds[0])
            POSIX.close(pipeEnds[1])
            throw error
        }
    }

    private func run(path: String, logger: Logger, accepted: @Sendable (Int32) -> Void) {
        var exhausted = false
        loop: while !self.state.withLock({ $0.stopped }) {
            if exhausted {
                // Out of descriptors: wait out the backoff (or a stop), then try again.
                var wakeEntry = pollfd(fd: self.wake.0, events: Int16(POLLIN), revents: 0)
                if poll(&wakeEntry, 1, Self.backoffMilliseconds) > 0 { break }
            } else {
                var entries = [
                    pollfd(fd: self.listening, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: self.wake.0, events: Int16(POLLIN), revents: 0),
                ]
                let ready = entries.withUnsafeMutableBufferPointer { poll($0.baseAddress, 2, -1) }
                if ready < 0 {
                    if errno == EINTR { continue }
                    break
                }
                if entries[1].revents != 0 { break }
            }
            // Accept everything waiting.
            while true {
                // Close-on-exec and non-blocking from the start: a child spawned
                // meanwhile never inherits it.
                let fd = c_intercom_accept_cloexec_nonblock(self.listening)
                if fd >= 0 {
                    if exhausted {
                        exhausted = false
                        logger.notice("accepting connections again", metadata: ["path": "\(path)"])
                    }
                    accepted(fd)
                    continue
                }
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK:
                    continue loop
                case EINTR, ECONNABORTED, EPROTO:
                    continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    if !exhausted {
                        logger.warning(
                            "out of descriptors or memory; accepting pauses and retries every \(Self.backoff)",
                            metadata: ["path": "\(path)", "error": "\(String(cString: strerror(code)))"])
                    }
                    exhausted = true
                    continue loop
                default:
                    logger.error("accepting failed; the listener stops", metadata: ["path": "\(path)", "error": "\(String(cString: strerror(code)))"])
                    break loop
                }
            }
        }
        POSIX.close(self.listening)
        let waiters = self.state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            // Under the lock: ``stop()`` writes to the pipe only while it is open.
            state.finished = true
            POSIX.close(self.wake.0)
            POSIX.close(self.wake.1)
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Tells the thread to stop accepting and close the listening socket, without waiting.
    package func requestStop() {
        self.state.withLock { state in
            if !state.stopped, !state.finished {
                var byte: UInt8 = 1
                _ = write(self.wake.1, &byte, 1)
            }
            state.stopped = true
        }
    }

    /// Stops accepting and returns once the thread has closed the listening socket.
    package func stop() async {
        self.requestStop()
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let finished = self.state.withLock { state -> Bool in
                if state.finished { return true }
                state.finishWaiters.append(continuation)
                return false
            }
            if finished { continuation.resume() }
        }
    }
}
