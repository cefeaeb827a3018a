package import IntercomWire
package import Logging
package import NIOCore
internal import Synchronization

/// A ``FrameTransport`` over a NIO stream channel: Unix sockets, socket pairs,
/// inherited descriptors and pipes.
///
/// Outbound frames from any thread are collected in an outbox and written in
/// batches by one event-loop task per batch, so many small frames cost one
/// `writev` rather than one syscall each. Senders wait in
/// ``waitUntilWritable()`` while the channel is over its high watermark or the
/// outbox holds that many bytes: a sender on the event loop itself never lets
/// the drain run until it suspends, so without the outbox's own bound it would
/// queue everything it sends in memory before the first byte is written.
package final class NIOFrameTransport: FrameTransport, WritabilityWaiting {
    let channel: any Channel
    package let executor: any TaskExecutor
    private let loop: any EventLoop
    package let handler: FrameChannelHandler
    let outbox = Locked(Outbox())
    package let blockedSendersObserver = SetOnce<@Sendable () -> Void>()

    struct Outbox {
        var pending: [ByteBuffer] = []
        /// Bytes in `pending`.
        var pendingBytes = 0
        var flushScheduled = false
        var channelWritable = true
        var closed = false
        var waiters = WritabilityWaiters()
        /// The batch buffer of the last drain, kept for reuse: once the channel
        /// has written it, its storage is ours again and `clear()` recycles it
        /// without a fresh allocation (fresh pages cost a page fault each).
        var spare: ByteBuffer?
        /// Writing from the sender's thread when nothing else is on its way out.
        var direct = DirectWrite()
        #if os(Linux)
        /// Where descriptors travel, once set up (``beginDescriptorChannel(deadline:established:failed:)``).
        var descriptorChannel: DescriptorChannel?
        #endif
    }

    /// Frames smaller than this are copied into a batch buffer (one `writev`
    /// element for many frames); larger ones are queued as they are (no copy).
    private static let coalesceLimit = 4096
    /// Capacity of a batch buffer.
    private static let batchCapacity = 32 * 1024

    /// The descriptor under the channel, if known (NIO does not tell it).
    let descriptor: Int32?

    package let peerCredentials: KernelCredentials?

    /// Bytes the outbox holds before ``sendIfWritable(_:)`` refuses more.
    private let outboxLimit: Int

    /// - Parameter outboxLimit: bytes the outbox may hold before senders wait
    ///   (the connection's outbound high watermark).
    ///   - medium: what the channel runs over (sockets, TCP, TLS), for diagnostics.
    package init(
        channel: any Channel, descriptor: Int32?, medium: TransportMedium = .socket, limits: WireLimits, outboxLimit: Int,
        logger: Logger
    ) {
        self.channel = channel
        self.medium = medium
        self.outboxLimit = max(1, outboxLimit)
        self.descriptor = descriptor
        self.peerCredentials = descriptor.flatMap(UnixSocket.connectedPeerCredentials)
        self.loop = channel.eventLoop
        self.executor = EventLoopExecutor.forLoop(channel.eventLoop)
        self.handler = FrameChannelHandler(limits: limits, logger: logger)
        self.handler.transport = self
    }

    deinit {
        self.outbox.withLock { $0.direct.turnOff() }
    }

    package var isOnTransportThread: Bool { self.loop.inEventLoop }
    package let medium: TransportMedium

    /// Runs `body` on the channel's event loop.
    func executeOnLoop(_ body: @escaping @Sendable () -> Void) {
        self.loop.execute(body)
    }

    /// On the event loop: a close-on-exec duplicate of the Unix stream socket
    /// under the channel, or nil (a pipe, another kind of socket, an unknown
    /// descriptor). Checked by the socket's cookie, so a descriptor number
    /// reused after the channel closed is never taken for it.
    func duplicateUnixSocket() -> Int32? {
        self.knownSocket.flatMap { DescriptorPassing.duplicateUnixStreamSocket($0.descriptor, cookie: $0.cookie) }
    }

    /// On the event loop: whether the channel runs over a Unix stream socket whose
    /// descriptor is known (so the connection could move to shared memory).
    var isUnixStreamSocket: Bool {
        self.knownSocket.map { DescriptorPassing.isUnixStreamSocket($0.descriptor, cookie: $0.cookie) } ?? false
    }

    /// The descriptor under the channel and its socket's cookie, when both are known (Linux).
    private var knownSocket: (descriptor: Int32, cookie: UInt64)? {
        #if os(Linux)
        guard let descriptor = self.descriptor, let cookie = self.socketCookie() else { return nil }
        return (descriptor, cookie)
        #else
        return nil
        #endif
    }

    /// On the event loop: the kernel's cookie of the socket under the channel
    /// (nil for pipes and anything that is not a socket).
    private func socketCookie() -> UInt64? {
        guard let provider = self.channel as? any SocketOptionProvider else { return nil }
        let future: EventLoopFuture<UInt64> = provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: 57 /* SO_COOKIE */))
        // On the event loop the option is read at once and the callback runs now.
        let cookie = Locked<UInt64?>(nil)
        future.whenSuccess { value in cookie.withLock { $0 = value } }
        return cookie.withLock { $0 }
    }

    /// On the event loop, during the handshake (no peer sends yet, so no direct
    /// write can overtake it): writes what is queued, then `bytes`, and flushes,
    /// keeping direct writes possible for later.
    func writeDuringHandshake(_ bytes: ByteBuffer) -> EventLoopFuture<Void> {
        self.drainOutbox()
        return self.channel.writeAndFlush(bytes)
    }

    /// On the event loop: writes what is queued, then `bytes`, and flushes;
    /// the future completes once the bytes were handed to the kernel.
    func writeNow(_ bytes: ByteBuffer) -> EventLoopFuture<Void> {
        self.turnOffDirectWrites()
        self.drainOutbox()
        return self.channel.writeAndFlush(bytes)
    }

    package func setReceiver(_ receiver: any FrameReceiver) {
        if self.loop.inEventLoop {
            self.handler.setReceiver(receiver)
        } else {
            self.loop.execute { self.handler.setReceiver(receiver) }
        }
    }

    package func send(_ bytes: ByteBuffer) {
        self.enqueue(bytes, onlyIfWritable: false)
    }

    package func sendIfWritable(_ bytes: ByteBuffer) -> Bool {
        self.enqueue(bytes, onlyIfWritable: true)
    }

    /// Appends to the outbox (unless `onlyIfWritable` and the channel is over its
    /// watermark, or the stream is closed) and schedules a drain if none is pending.
    /// `before` runs under the outbox lock once the bytes are sure to be queued;
    /// if it returns false, they are not.
    @discardableResult
    func enqueue(_ bytes: ByteBuffer, onlyIfWritable: Bool, before: ((inout Outbox) -> Bool)? = nil) -> Bool {
        var accepted = false
        let offLoop = !self.loop.inEventLoop
        let mustSchedule = self.outbox.withLock { outbox -> Bool in
            guard !outbox.closed, !onlyIfWritable || (outbox.channelWritable && outbox.pendingBytes < self.outboxLimit) else {
                return false
            }
            if let before, !before(&outbox) { return false }
            accepted = true
            var bytes = bytes
            if offLoop {
                if outbox.pending.isEmpty, !outbox.flushScheduled, outbox.channelWritable, outbox.direct.mayWrite {
                    outbox.direct.write(&bytes)
                    if bytes.readableBytes == 0 { return false }
                    // The socket took part or none of it: the rest goes the usual way.
                } else {
                    outbox.direct.wanted = true
                }
            }
            outbox.pendingBytes += bytes.readableBytes
            if bytes.readableBytes < Self.coalesceLimit {
                var copy = bytes
                if outbox.pending.isEmpty || outbox.pending[outbox.pending.count - 1].writableBytes < copy.readableBytes {
                    var batch = outbox.spare.take() ?? ByteBuffer()
                    batch.clear(minimumCapacity: Self.batchCapacity)
                    outbox.pending.append(batch)
                }
                outbox.pending[outbox.pending.count - 1].writeBuffer(&copy)
            } else {
                outbox.pending.append(bytes)
            }
            if outbox.flushScheduled { return false }
            outbox.flushScheduled = true
            return true
        }
        if mustSchedule {
            self.loop.execute { self.drainOutbox() }
        }
        return accepted
    }

    /// On the event loop: writes everything queued and flushes once; then
    /// resumes the senders that waited for the outbox to empty, if the channel
    /// still takes more.
    private func drainOutbox() {
        let (batch, tracked, makeDuplicate) = self.outbox.withLock { outbox -> ([ByteBuffer], Bool, Bool) in
            outbox.flushScheduled = false
            outbox.pendingBytes = 0
            // Hand the array over; keeping its capacity would only force a copy-on-write.
            defer { outbox.pending = [] }
            let makeDuplicate = outbox.direct.takeWish()
            // While direct writes are on (or about to be), count the batch until NIO has written it.
            let tracked = !outbox.pending.isEmpty && (outbox.direct.isOn || makeDuplicate)
            if tracked { outbox.direct.batchesInNIO += 1 }
            return (outbox.pending, tracked, makeDuplicate)
        }
        if makeDuplicate { self.makeDirectWriteDescriptor() }
        guard !batch.isEmpty else { return }
        for buffer in batch {
            if self.medium == .tls, buffer.readableBytes > Self.tlsSliceSize {
                self.writeInSlices(buffer)
            } else {
                self.channel.write(buffer, promise: nil)
            }
        }
        self.channel.flush()
        if tracked { self.untrackWhenWritten() }
        let spare = batch.last.flatMap { $0.capacity == Self.batchCapacity ? $0 : nil }
        let waiters = self.outbox.withLock { outbox -> [UnsafeContinuation<Void, any Error>] in
            if let spare { outbox.spare = spare }
            // Writing may have made the channel unwritable (NIO says so at once):
            // then its writability change resumes them, later.
            guard outbox.channelWritable, outbox.pendingBytes < self.outboxLimit, outbox.waiters.count > 0 else { return [] }
            return outbox.waiters.takeAll()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Over TLS, large frames are flushed a slice at a time: the TLS handler
    /// encrypts everything flushed before it writes a byte, so a 1 MiB frame
    /// flushed whole is encrypted whole before the other side can start
    /// decrypting; in slices, the two sides (and the kernel) work at once.
    private static let tlsSliceSize = 64 * 1024

    private func writeInSlices(_ buffer: ByteBuffer) {
        var rest = buffer
        while rest.readableBytes > Self.tlsSliceSize, let slice = rest.readSlice(length: Self.tlsSliceSize) {
            self.channel.writeAndFlush(slice, promise: nil)
        }
        self.channel.write(rest, promise: nil)
    }

    /// On the event loop, after a flush of a tracked batch: stops counting it at
    /// once if NIO wrote it all (the usual case, checked without allocating),
    /// else when NIO has written it (an empty write's promise completes after
    /// every write before it).
    func untrackWhenWritten() {
        let buffered = (try? self.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 1
        guard buffered > 0 else {
            self.outbox.withLock { $0.direct.batchesInNIO -= 1 }
            return
        }
        let written = self.loop.makePromise(of: Void.self)
        self.channel.writeAndFlush(ByteBuffer(), promise: written)
        written.futureResult.whenComplete { _ in self.outbox.withLock { $0.direct.batchesInNIO -= 1 } }
    }

    package func waitUntilWritable() async throws(IntercomError) {
        try await self.suspendUntilWritable()
    }

    package func withWritability<R, E: Error>(_ body: (Writability, inout WritabilityWaiters) throws(E) -> R) throws(E) -> R {
        try self.outbox.withLock { outbox throws(E) -> R in
            let writability: Writability =
                outbox.closed
                ? .closed(IntercomError(.closed, "the connection is closed"))
                : outbox.channelWritable && outbox.pendingBytes < self.outboxLimit ? .writable : .full
            return try body(writability, &outbox.waiters)
        }
    }

    /// On the event loop: the channel's writability changed.
    func writabilityChanged(_ writable: Bool) {
        let waiters = self.outbox.withLock { outbox -> [UnsafeContinuation<Void, any Error>] in
            outbox.channelWritable = writable
            return writable ? outbox.waiters.takeAll() : []
        }
        for waiter in waiters { waiter.resume() }
        if writable { self.handler.notifyWritable() }
    }

    /// On the event loop: the channel is gone; fail every waiting sender.
    func markClosed() {
        let waiters = self.outbox.withLock { outbox -> [UnsafeContinuation<Void, any Error>] in
            outbox.closed = true
            outbox.pending.removeAll()
            outbox.pendingBytes = 0
            outbox.direct.turnOff()  // the peer sees the end only once no descriptor of the socket is open
            #if os(Linux)
            outbox.descriptorChannel = nil  // closed once the reader lets go of it too
            #endif
            return outbox.waiters.takeAll()
        }
        for waiter in waiters { waiter.resume(throwing: IntercomError(.peerLost, "the connection closed while waiting to send")) }
    }

    package var blockedSenders: Int { self.outbox.withLock { $0.waiters.count } }

    package func setReadingPaused(_ paused: Bool, reason: ReadPauseReason) {
        if self.loop.inEventLoop {
            self.handler.setReadingPaused(paused, reason: reason)
        } else {
            self.loop.execute { self.handler.setReadingPaused(paused, reason: reason) }
        }
    }

    package func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> any ScheduledWork {
        let task = self.loop.scheduleTask(in: .nanoseconds(delay.nanosecondsClamped)) { body() }
        return NIOScheduledWork(task: task)
    }

    package func close() {
        self.loop.execute {
            self.drainOutbox()
            self.channel.close(promise: nil)
        }
    }
}

private struct NIOScheduledWork: ScheduledWork {
    let task: Scheduled<Void>
    func cancel() { self.task.cancel() }
}

