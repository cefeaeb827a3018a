#if os(Linux)
internal import CIntercomShims
internal import DequeModule
internal import Glibc
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization

// The transport's own thread: its loop (turns over every source of work, a cheap
// watch when idle, a futex sleep after the spin budget), the mail other threads
// post to it, its timers, moving the overflow on, and the end of the connection.
extension SharedMemoryTransport {
    /// Changes `mail` under its lock and wakes the transport's thread.
    @discardableResult
    func post<T: Sendable>(_ change: (inout Mail) -> T) -> T {
        let result = self.mail.withLock { change(&$0) }
        self.hasMail.store(true, ordering: .sequentiallyConsistent)
        if !self.isOnTransportThread { self.inbound.wakeReader() }
        return result
    }

    /// Serves the connection until it closes, then hands later jobs to the event loop.
    ///
    /// A busy thread takes turn after turn. An idle one watches only the cheap
    /// signs of work — a few atomic loads, no clock, no lock, no exclusivity
    /// check — between turns, so it sees the other side's next frame within
    /// tens of nanoseconds; it reads the clock once per watch (for the timers
    /// and the spin budget) and sleeps on its futex once the budget is spent.
    func run() {
        let loop = self.loop
        var idleSince: ContinuousClock.Instant?
        var watches = 0
        while !loop.finished {
            if self.turn() {
                idleSince = nil
                continue
            }
            let now = ContinuousClock.now
            let since = idleSince ?? now
            idleSince = since
            if now - since >= self.options.spinDuration {
                self.sleepUntilWork()
                idleSince = nil
                continue
            }
            // Yield now and then, for a peer or a thread of ours that shares this CPU.
            watches &+= 1
            if watches & 15 == 0 { sched_yield() }
            self.watchForWork(spins: 64)
        }
        self.exit()
    }

    /// One pass over every source of work; true if any had some.
    func turn() -> Bool {
        let loop = self.loop
        var busy = false
        if self.hasMail.load(ordering: .sequentiallyConsistent) {
            busy = self.takeMail() || busy
        }
        busy = self.runDueTimers() || busy
        busy = self.readInbound() || busy
        busy = self.moveOverflow() || busy
        if loop.closing || loop.socketEnded { self.finishIfDone() }
        return busy
    }

    /// Spins until a sign of work (posted mail, bytes to move on, inbound bytes
    /// it may read) or `spins` checks pass; timers are the caller's, per watch.
    func watchForWork(spins: Int) {
        let loop = self.loop
        if loop.undecoded || loop.pendingReference != nil || loop.closing || loop.socketEnded { return }
        let reading = loop.receiver != nil && loop.pauseReasons.isEmpty
        let reader = loop.reader
        for _ in 0..<spins {
            if self.hasMail.load(ordering: .relaxed) || self.overflowing.load(ordering: .relaxed) { return }
            if reading, self.inbound.hasData(reader) { return }
            c_intercom_cpu_relax()
        }
    }

    /// Moves what other threads posted into the thread's own state and runs the jobs.
    ///
    /// Mail is double-buffered: the emptied collections of the last turn go back
    /// under the lock with their capacity, so posting a job allocates nothing.
    func takeMail() -> Bool {
        self.hasMail.store(false, ordering: .sequentiallyConsistent)
        let loop = self.loop
        var taken = Mail()
        swap(&taken, &loop.spareMail)
        self.mail.withLock { swap(&taken, &$0) }
        defer {
            taken.clear()
            swap(&taken, &loop.spareMail)
        }
        if let receiver = taken.receiver {
            let first = loop.receiver == nil
            loop.receiver = receiver
            if first { receiver.transportActive() }
        }
        for (paused, reason) in taken.pauseChanges { self.applyPause(paused, reason: reason) }
        if !taken.timers.isEmpty {
            loop.timers.append(contentsOf: taken.timers)
            let earliest = taken.timers.lazy.map(\.deadline).min()!
            loop.earliestTimer = loop.earliestTimer.map { min($0, earliest) } ?? earliest
        }
        if taken.closeRequested, !loop.closing {
            loop.closing = true
            loop.closeStarted = .now
        }
        if taken.socketEnded { loop.socketEnded = true }
        let executor = self.asUnownedTaskExecutor()
        for job in taken.jobs { job.runSynchronously(on: executor) }
        return !taken.jobs.isEmpty || taken.receiver != nil || taken.closeRequested || taken.socketEnded
    }

    func applyPause(_ paused: Bool, reason: ReadPauseReason) {
        if paused {
            self.loop.pauseReasons.insert(reason)
        } else {
            self.loop.pauseReasons.remove(reason)
        }
    }

    func runDueTimers() -> Bool {
        let loop = self.loop
        guard let earliest = loop.earliestTimer else { return false }
        let now = ContinuousClock.now
        guard earliest <= now else { return false }
        var due: [SharedMemoryTimer] = []
        loop.timers.removeAll { timer in
            if timer.isCancelled { return true }
            if timer.deadline <= now {
                due.append(timer)
                return true
            }
            return false
        }
        loop.earliestTimer = loop.timers.lazy.map(\.deadline).min()
        for timer in due { timer.body() }
        return !due.isEmpty
    }

    /// Moves overflowing bytes into the ring as room appears; wakes waiting senders once it is empty.
    func moveOverflow() -> Bool {
        guard self.overflowing.load(ordering: .sequentiallyConsistent) else { return false }
        var moved = false
        var failure: ProtocolError?
        let waiters = self.writer.withLock { writer -> [UnsafeContinuation<Void, any Error>]? in
            guard !writer.overflow.isEmpty, !writer.closed else { return nil }
            while var first = writer.overflow.popFirst() {
                let before = first.readableBytes
                do throws(ProtocolError) {
                    try self.write(&first, state: &writer.state)
                } catch {
                    failure = error
                    writer.failure = error
                    return nil
                }
                if first.readableBytes < before { moved = true }
                if first.readableBytes > 0 {
                    writer.overflow.prepend(first)
                    // Ask the reader for a notice once it frees room.
                    self.outbound.requestSpaceNotice()
                    return nil
                }
            }
            self.overflowing.store(false, ordering: .sequentiallyConsistent)
            return writer.waiters.takeAll()
        }
        if let failure {
            self.fail(failure)
            return true
        }
        if let waiters {
            for waiter in waiters { waiter.resume() }
            self.loop.receiver?.transportWritable()
            return true
        }
        return moved
    }

    /// Bytes from the other side wait to be delivered: in the ring, or taken
    /// from it during the upgrade.
    var hasInboundBytes: Bool {
        let loop = self.loop
        return loop.undecoded || loop.pendingReference != nil || self.inbound.hasData(loop.reader)
    }

    /// Something is ready for the thread (checked once more before sleeping).
    func hasWork() -> Bool {
        let loop = self.loop
        if self.hasMail.load(ordering: .sequentiallyConsistent) { return true }
        if loop.receiver != nil, loop.pauseReasons.isEmpty, self.hasInboundBytes { return true }
        if let next = loop.earliestTimer, next <= .now { return true }
        if loop.closing || loop.socketEnded { return true }
        guard self.overflowing.load(ordering: .sequentiallyConsistent) else { return false }
        return self.writer.withLock { writer in
            !writer.overflow.isEmpty && self.outbound.freeSpace(writer.state) >= 16
        }
    }

    func sleepUntilWork() {
        if self.overflowing.load(ordering: .sequentiallyConsistent) { self.outbound.requestSpaceNotice() }
        let seen = self.inbound.prepareToSleep()
        if self.hasWork() {
            self.inbound.cancelSleep()
            return
        }
        var timeout = Duration.seconds(1)
        if let next = self.loop.earliestTimer {
            timeout = max(.zero, min(timeout, next - .now))
        }
        self.inbound.sleep(seen: seen, timeout: timeout)
    }

    /// A broken ring: tell the receiver, tell the other side (best effort) and close.
    func fail(_ error: ProtocolError) {
        let loop = self.loop
        guard !loop.finished, !loop.closing else { return }
        self.logger.warning("closing a shared-memory connection after a protocol violation", metadata: ["error": "\(error)"])
        loop.receiver?.transportFailed(error)
        self.writer.withLock { writer in
            var frame = ErrorBody(connectionError: error).frame(id: 0)
            if writer.failure == nil, writer.overflow.isEmpty { try? self.write(&frame, state: &writer.state) }
            writer.overflow.removeAll()
        }
        loop.closing = true
        loop.closeStarted = .now
    }

    /// Ends the connection once it is closing and nothing is left to move: the
    /// other side's last frames are read first (they were written before its socket closed).
    func finishIfDone() {
        let loop = self.loop
        if loop.socketEnded {
            // Whatever the other side wrote before its socket ended was read above.
            loop.finished = true
            return
        }
        let drained = self.writer.withLock { $0.overflow.isEmpty || $0.failure != nil }
        let waitedTooLong = loop.closeStarted.map { .now - $0 > .seconds(2) } ?? true
        if drained || waitedTooLong { loop.finished = true }
    }

    /// Closes the socket, fails waiting senders, tells the receiver, and hands
    /// this executor's later jobs and timers to the socket's event loop.
    func exit() {
        let error =
            self.loop.socketEnded && !self.loop.closing
            ? IntercomError(.peerLost, "the other side is gone") : IntercomError(.closed, "the connection is closed")
        let waiters = self.writer.withLock { writer -> [UnsafeContinuation<Void, any Error>] in
            writer.closed = true
            writer.closedError = error
            writer.overflow.removeAll()
            self.descriptorChannel?.closeSending()
            return writer.waiters.takeAll()
        }
        // Descriptors the other side sent for frames never read are closed with the socket.
        self.descriptorChannel?.closeReceiving()
        for waiter in waiters { waiter.resume(throwing: error) }
        // Closed before the receiver hears of it, as with a socket transport: whoever
        // waits for the connection to close finds its descriptor gone.
        self.socket.close()
        try? self.socket.channel.closeFuture.wait()
        self.loop.receiver?.transportClosed()
        self.loop.receiver = nil
        // Anything posted until now runs here; later posts go to the event loop.
        while true {
            let (jobs, timers, late) = self.mail.withLock { mail -> (Deque<UnownedJob>, [SharedMemoryTimer], (any FrameReceiver)?) in
                defer {
                    mail.jobs.removeAll()
                    mail.timers.removeAll()
                    mail.receiver = nil
                }
                if mail.jobs.isEmpty { mail.exited = true }
                return (mail.jobs, mail.timers, mail.receiver)
            }
            // A receiver set after the thread last took its mail never heard of the
            // end (``setReceiver(_:)`` tells those that come after `exited`).
            late?.transportClosed()
            for timer in timers + self.loop.timers where !timer.isCancelled {
                _ = self.socket.schedule(after: max(.zero, timer.deadline - .now)) {
                    if !timer.isCancelled { timer.body() }
                }
            }
            self.loop.timers.removeAll()
            self.loop.earliestTimer = nil
            if jobs.isEmpty { break }
            let executor = self.asUnownedTaskExecutor()
            for job in jobs { job.runSynchronously(on: executor) }
        }
    }
}
#endif
