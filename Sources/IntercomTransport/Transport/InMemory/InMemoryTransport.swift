package import IntercomWire
package import NIOCore

/// Two ends of a connection that never leaves the process: what one end sends
/// is cut into frames by the other end's decoder, as from a socket, on one
/// event loop. No kernel, no threads of its own; on a testing event loop
/// (NIO's `NIOAsyncTestingEventLoop`) time is virtual and moves only when the
/// test moves it, so deadlines and timeouts are deterministic.
///
/// Each direction can be made to misbehave: stall (bytes wait, the sender
/// meets backpressure), drop whole frames, corrupt a byte, or the whole
/// connection can be cut without a goodbye. Everything is confined to the
/// loop: sends from other threads are handed to it, and frames are delivered
/// in a later loop task, never inside `send` (a receiver may send from inside
/// its own callback, holding its own locks).
package final class InMemoryLink: Sendable {
    /// One direction: the bytes its sender wrote that its receiver did not take yet.
    struct Direction {
        /// Sent and not yet taken by the receiver's decoder: the sender's backlog,
        /// measured against its watermarks.
        var pending = ByteBuffer()
        /// Held back by ``InMemoryLink/stall(from:)``.
        var stalled = false
        /// Whole frames still to lose on the way.
        var framesToDrop = 0
        /// Flip the byte at this offset of the next bytes sent (a frame, or the first of a batch).
        var corruptNextAt: Int?
    }

    /// One end: its receiver, whether it reads, and the senders waiting for room.
    struct Side {
        var receiver: (any FrameReceiver)?
        var paused: ReadPauseReason = []
        var waiters = WritabilityWaiters()
        var wasFull = false
    }

    struct State {
        var directions = [Direction(), Direction()]
        var sides = [Side(), Side()]
        var ended: IntercomError?
        var pumpQueued = [false, false]
    }

    let loop: any EventLoop
    let limits: [WireLimits]
    /// Each sender's outbound watermarks: past `high` unsent bytes it is full,
    /// below `low` it has room again.
    let watermarks: [(low: Int, high: Int)]
    let state = Locked(State())

    /// The two ends, 0 and 1 (set once, in ``make(on:limits:watermarks:)``, before the link is shared).
    package nonisolated(unsafe) private(set) var ends: [InMemoryTransport] = []

    private init(loop: any EventLoop, limits: [WireLimits], watermarks: [(low: Int, high: Int)]) {
        self.loop = loop
        self.limits = limits
        self.watermarks = watermarks
    }

    /// A connection on `loop`; each end decodes with its own limits.
    package static func make(
        on loop: any EventLoop, limits: (WireLimits, WireLimits), watermarks: ((low: Int, high: Int), (low: Int, high: Int))
    ) -> InMemoryLink {
        let link = InMemoryLink(loop: loop, limits: [limits.0, limits.1], watermarks: [watermarks.0, watermarks.1])
        link.ends = [InMemoryTransport(link: link, side: 0), InMemoryTransport(link: link, side: 1)]
        return link
    }

    // MARK: Faults (the direction is named by the end that sends)

    /// Holds every byte `sender` sends until ``resume(from:)``; its senders meet backpressure past the watermark.
    package func stall(from sender: Int) { self.state.withLock { $0.directions[sender].stalled = true } }

    /// Delivers what a stall held back, and everything after it.
    package func resume(from sender: Int) {
        self.state.withLock { $0.directions[sender].stalled = false }
        self.schedulePump(from: sender)
    }

    /// The next `count` whole frames `sender` sends vanish on the way.
    package func dropFrames(from sender: Int, count: Int) {
        self.state.withLock { $0.directions[sender].framesToDrop += count }
    }

    /// The next frame `sender` sends arrives with the byte at `offset` (from
    /// the frame's first byte) flipped.
    package func corruptNextFrame(from sender: Int, at offset: Int) {
        self.state.withLock { $0.directions[sender].corruptNextAt = offset }
    }

    /// Ends the connection at once, as a dead process or a pulled cable would:
    /// nothing in flight arrives, no goodbye, both ends see the end of the stream.
    package func cut() {
        self.loop.execute { self.end(IntercomError(.peerLost, "the in-memory connection was cut")) }
    }

    // MARK: Moving bytes

    func send(_ bytes: ByteBuffer, from sender: Int) {
        let queue = self.state.withLock { state -> Bool in
            guard state.ended == nil else { return false }
            var bytes = bytes
            if let offset = state.directions[sender].corruptNextAt, offset < bytes.readableBytes {
                let index = bytes.readerIndex + offset
                bytes.setInteger(bytes.getInteger(at: index, as: UInt8.self)! ^ 0xFF, at: index)
                state.directions[sender].corruptNextAt = nil
            }
            state.directions[sender].pending.writeImmutableBuffer(bytes)
            if state.directions[sender].pending.readableBytes >= self.watermarks[sender].high { state.sides[sender].wasFull = true }
            return true
        }
        if queue { self.schedulePump(from: sender) }
    }

    func writability(of sender: Int, _ state: State) -> Writability {
        if let ended = state.ended { return .closed(ended) }
        return state.directions[sender].pending.readableBytes >= self.watermarks[sender].high ? .full : .writable
    }

    /// Delivers `sender`'s bytes in a later loop task (once, however many sends come before it).
    func schedulePump(from sender: Int) {
        let queue = self.state.withLock { state -> Bool in
            guard !state.pumpQueued[sender] else { return false }
            state.pumpQueued[sender] = true
            return true
        }
        if queue { self.loop.execute { self.pump(from: sender) } }
    }

    /// On the loop: hands the whole frames `sender` sent to the other end's
    /// receiver while it reads, then tells `sender` if it has room again.
    func pump(from sender: Int) {
        let receiving = 1 - sender
        var delivered = false
        while true {
            let next = self.state.withLock { state -> Result<(Frame, any FrameReceiver)?, ProtocolError> in
                state.pumpQueued[sender] = false
                guard state.ended == nil, !state.directions[sender].stalled, state.sides[receiving].paused.isEmpty,
                    let receiver = state.sides[receiving].receiver
                else { return .success(nil) }
                let decoder = FrameDecoder(limits: self.limits[receiving])
                do throws(ProtocolError) {
                    while let frame = try decoder.next(from: &state.directions[sender].pending) {
                        if state.directions[sender].framesToDrop > 0 {
                            state.directions[sender].framesToDrop -= 1
                            continue
                        }
                        return .success((frame, receiver))
                    }
                    return .success(nil)
                } catch {
                    return .failure(error)
                }
            }
            switch next {
            case .success(let (frame, receiver)?):
                delivered = true
                receiver.receive(frame)
            case .success(nil):
                self.state.withLock { state in
                    // Delivered frames keep their slices; the backlog does not keep growing.
                    if state.directions[sender].pending.readableBytes == 0 {
                        state.directions[sender].pending = ByteBuffer()
                    } else if state.directions[sender].pending.readerIndex > 64 << 10 {
                        state.directions[sender].pending.discardReadBytes()
                    }
                }
                if delivered { self.state.withLock { $0.sides[receiving].receiver }?.endOfReadBatch() }
                self.tellIfWritable(sender)
                return
            case .failure(let error):
                self.violation(error, detectedBy: receiving)
                return
            }
        }
    }

    /// Resumes `sender`'s waiting senders once its backlog fell below the low watermark.
    func tellIfWritable(_ sender: Int) {
        let (waiters, receiver) = self.state.withLock { state -> ([UnsafeContinuation<Void, any Error>], (any FrameReceiver)?) in
            guard state.ended == nil, state.sides[sender].wasFull,
                state.directions[sender].pending.readableBytes < self.watermarks[sender].low
            else { return ([], nil) }
            state.sides[sender].wasFull = false
            return (state.sides[sender].waiters.takeAll(), state.sides[sender].receiver)
        }
        for waiter in waiters { waiter.resume() }
        receiver?.transportWritable()
    }

    /// The receiving end found a protocol violation: it tells the sender why
    /// (an error frame, id 0, as the socket transport does) and the connection ends.
    func violation(_ error: ProtocolError, detectedBy side: Int) {
        let (receiver, other) = self.state.withLock { state in
            (state.sides[side].receiver, state.sides[1 - side].receiver)
        }
        receiver?.transportFailed(error)
        var body = ErrorBody(connectionError: error).frame(id: 0)
        if let frame = try? FrameDecoder(limits: self.limits[1 - side]).next(from: &body) { other?.receive(frame) }
        self.end(IntercomError(error, peer: nil))
    }

    /// On the loop: the connection is over; both receivers hear it once, waiting senders fail.
    func end(_ error: IntercomError) {
        let (receivers, waiters) = self.state.withLock { state -> ([any FrameReceiver], [UnsafeContinuation<Void, any Error>]) in
            guard state.ended == nil else { return ([], []) }
            state.ended = error
            let receivers = state.sides.compactMap(\.receiver)
            let waiters = state.sides.indices.flatMap { state.sides[$0].waiters.takeAll() }
            for index in state.sides.indices { state.sides[index].receiver = nil }
            state.directions = [Direction(), Direction()]
            return (receivers, waiters)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
        for receiver in receivers { receiver.transportClosed() }
    }
}

/// One end of an ``InMemoryLink``.
package final class InMemoryTransport: FrameTransport, WritabilityWaiting {
    let link: InMemoryLink
    let side: Int
    package let executor: any TaskExecutor
    package let blockedSendersObserver = SetOnce<@Sendable () -> Void>()

    init(link: InMemoryLink, side: Int) {
        self.link = link
        self.side = side
        self.executor = EventLoopExecutor.forLoop(link.loop)
    }

    package var isOnTransportThread: Bool { self.link.loop.inEventLoop }
    package var medium: TransportMedium { .inMemory }
    package var peerCredentials: KernelCredentials? { nil }

    /// The loop's clock: virtual on a testing loop. An instant on the system's
    /// clock plus the loop's own time, so a deadline compares as it would.
    package var now: ContinuousClock.Instant {
        InMemoryClock.origin.advanced(by: .nanoseconds(self.link.loop.now.uptimeNanoseconds))
    }

    package func setReceiver(_ receiver: any FrameReceiver) {
        let ended = self.link.state.withLock { state -> Bool in
            guard state.ended == nil else { return true }
            state.sides[self.side].receiver = receiver
            return false
        }
        if ended {
            self.link.loop.execute { receiver.transportClosed() }
        } else {
            self.link.schedulePump(from: 1 - self.side)
        }
    }

    package func send(_ bytes: ByteBuffer) { self.link.send(bytes, from: self.side) }

    package func sendIfWritable(_ bytes: ByteBuffer) -> Bool {
        let writable = self.link.state.withLock { state in
            if case .full = self.link.writability(of: self.side, state) { return false }
            return true
        }
        if writable { self.send(bytes) }
        return writable
    }

    package func withWritability<R, E: Error>(_ body: (Writability, inout WritabilityWaiters) throws(E) -> R) throws(E) -> R {
        try self.link.state.withLock { state throws(E) -> R in
            try body(self.link.writability(of: self.side, state), &state.sides[self.side].waiters)
        }
    }

    package func waitUntilWritable() async throws(IntercomError) { try await self.suspendUntilWritable() }

    package var blockedSenders: Int { self.link.state.withLock { $0.sides[self.side].waiters.count } }

    package func setReadingPaused(_ paused: Bool, reason: ReadPauseReason) {
        let resumed = self.link.state.withLock { state -> Bool in
            if paused {
                state.sides[self.side].paused.insert(reason)
                return false
            }
            state.sides[self.side].paused.remove(reason)
            return state.sides[self.side].paused.isEmpty
        }
        if resumed { self.link.schedulePump(from: 1 - self.side) }
    }

    package func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> any ScheduledWork {
        InMemoryScheduledWork(
            task: self.link.loop.scheduleTask(in: .nanoseconds(delay.nanosecondsClamped)) { body() }, loop: self.link.loop)
    }

    /// Delivers what this end sent, then ends the connection.
    package func close() {
        self.link.loop.execute {
            self.link.pump(from: self.side)
            self.link.end(IntercomError(.closed, "the in-memory connection was closed"))
        }
    }
}

/// Cancels on the loop: a testing loop that already shut down (and failed
/// every scheduled task) then drops the cancellation instead of failing the
/// task's promise a second time from another thread, which it cannot do —
/// its debug build stopped the process over a "leaking promise".
private struct InMemoryScheduledWork: ScheduledWork {
    let task: Scheduled<Void>
    let loop: any EventLoop
    func cancel() {
        let task = self.task
        if self.loop.inEventLoop {
            task.cancel()
        } else {
            self.loop.execute { task.cancel() }
        }
    }
}

/// Where in-memory time starts on the system's clock (fixed once per process),
/// so instants from a virtual loop and from the system compare sensibly.
package enum InMemoryClock {
    static let origin = ContinuousClock.now
}
