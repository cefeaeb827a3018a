@_spi(IntercomInternals) public import IntercomTransport
public import IntercomWire
public import NIOCore
internal import Synchronization
internal import DequeModule
internal import CIntercomShims
#if canImport(Glibc)
internal import Glibc
#endif

/// A one-way message that arrived without a handler, still encoded.
public struct InboundMessage: Sendable {
    /// The method the sender named, if any.
    public let method: String?
    /// The encoded payload.
    public let payload: ByteBuffer
    /// The connection's codec.
    public let codec: PayloadCodec
    /// Descriptors that came with the payload (``UnixDescriptor``s decode from them).
    var descriptors: ReceivedDescriptors? = nil

    /// Decodes the payload as `type`.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` naming the type and what did not match.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws(IntercomError) -> T {
        try self.codec.decodePayload(
            T.self, from: self.payload, what: self.method.map { "message '\($0)'" } ?? "message",
            context: .init(method: self.method), descriptors: self.descriptors)
    }
}

/// The bounded queue of unsolicited messages. When it holds `capacity` messages,
/// or `byteCapacity` bytes of them, the connection stops reading until receivers
/// have taken half.
///
/// Messages are kept in the batches they arrived in (one per read of the
/// connection): a batch goes in, and usually out through ``nextBatch(limit:timeout:)``,
/// without copying each message — at millions of messages a second the copies
/// (a retain and release of each payload and method) were most of the cost.
final class Inbox: Sendable {
    private struct State {
        /// The queued messages, in order, in the batches they arrived in.
        var batches = Deque<[InboundMessage]>()
        /// How many of the first batch's messages were taken already.
        var taken = 0
        /// How many messages are queued.
        var count = 0
        /// The bytes of the queued messages (payloads and method names), and of
        /// what is left of each batch, front first.
        var bytes = 0
        var batchBytes = Deque<Int>()
        var waiters: [UInt64: UnsafeContinuation<InboundMessage, any Error>] = [:]
        var waiterOrder = Deque<UInt64>()
        var nextWaiterID: UInt64 = 0
        /// Tasks waiting until a message is queued, without taking it.
        var watchers: [UInt64: UnsafeContinuation<Bool, any Error>] = [:]
        var ended: IntercomError?
        var paused = false
        /// The eventfd that is readable while a message is queued or the stream
        /// has ended (made on first request; -1 until then), and whether it is set.
        var readiness: Int32 = -1
        var readinessSet = false

        /// Sets or clears the readiness descriptor to match the queue (a system
        /// call only when that changes, and only once someone asked for it).
        mutating func syncReadiness() {
            guard self.readiness >= 0 else { return }
            let ready = self.count > 0 || self.ended != nil
            guard ready != self.readinessSet else { return }
            if ready { c_intercom_readiness_set(self.readiness) } else { c_intercom_readiness_clear(self.readiness) }
            self.readinessSet = ready
        }

        mutating func popFirst() -> InboundMessage? {
            guard self.count > 0 else { return nil }
            let message = self.batches[0][self.taken]
            self.advance(by: 1, bytes: Self.size(of: message))
            self.syncReadiness()
            return message
        }

        /// Up to `limit` messages from the front: the first batch itself when it
        /// is whole and small enough, else a copy of its front.
        mutating func take(upTo limit: Int) -> [InboundMessage] {
            guard self.count > 0, limit > 0 else { return [] }
            if self.taken == 0, self.batches[0].count <= limit {
                self.count -= self.batches[0].count
                self.bytes -= self.batchBytes.removeFirst()
                defer { self.syncReadiness() }
                return self.batches.removeFirst()
            }
            let end = min(self.batches[0].count, self.taken + limit)
            let messages = Array(self.batches[0][self.taken..<end])
            self.advance(by: messages.count, bytes: Self.size(of: messages[...]))
            self.syncReadiness()
            return messages
        }

        /// Appends a batch of messages that arrived together.
        mutating func append(_ batch: [InboundMessage], bytes: Int) {
            self.batches.append(batch)
            self.batchBytes.append(bytes)
            self.count += batch.count
            self.bytes += bytes
            self.syncReadiness()
        }

        private mutating func advance(by taken: Int, bytes: Int) {
            self.taken += taken
            self.count -= taken
            self.bytes -= bytes
            self.batchBytes[0] -= bytes
            if self.taken == self.batches[0].count {
                self.batches.removeFirst()
                self.batchBytes.removeFirst()
                self.taken = 0
            }
        }

        /// What a message holds while queued.
        static func size(of message: InboundMessage) -> Int {
            message.payload.readableBytes + (message.method?.utf8.count ?? 0) + 64
        }

        static func size(of messages: ArraySlice<InboundMessage>) -> Int {
            messages.reduce(0) { $0 + Self.size(of: $1) }
        }

        /// Whether the inbox holds as much as it may (reading must pause).
        func isFull(capacity: Int, byteCapacity: Int) -> Bool {
            self.count >= capacity || self.bytes >= byteCapacity
        }

        /// Whether reading, paused because the inbox was full, may resume now
        /// (it has drained to half, in count and in bytes): clears `paused` if so.
        mutating func resumesReading(capacity: Int, byteCapacity: Int) -> Bool {
            guard self.paused, self.count < capacity / 2 + 1, self.bytes <= byteCapacity / 2 else { return false }
            self.paused = false
            return true
        }
    }

    private let state = Locked(State())
    private let capacity: Int
    private let byteCapacity: Int
    nonisolated(unsafe) weak var transport: (any FrameTransport)?

    init(capacity: Int, byteCapacity: Int) {
        self.capacity = max(1, capacity)
        self.byteCapacity = max(1, byteCapacity)
    }

    deinit {
        #if canImport(Glibc)
        let fd = self.state.withLock { $0.readiness }
        if fd >= 0 { Glibc.close(fd) }
        #endif
    }

    /// The descriptor that is readable while a message is queued or the stream
    /// has ended; made on the first call, the same one after.
    func readinessDescriptor() throws(IntercomError) -> Int32 {
        try self.state.withLock { (state: inout State) throws(IntercomError) -> Int32 in
            if state.readiness < 0 {
                let fd = c_intercom_readiness_create()
                guard fd >= 0 else {
                    throw IntercomError(.busy, "no readiness descriptor: eventfd failed (errno \(errno); out of descriptors, or not Linux)")
                }
                state.readiness = fd
                state.syncReadiness()
            }
            return state.readiness
        }
    }

    /// On the transport thread: messages arrived (in order), queued under one lock.
    func append(contentsOf messages: [InboundMessage]) {
        guard !messages.isEmpty else { return }
        var handed: [(UnsafeContinuation<InboundMessage, any Error>, InboundMessage)] = []
        var watchers: [UnsafeContinuation<Bool, any Error>] = []
        let pause = self.state.withLock { state -> Bool in
            var rest = messages[...]
            // Receivers already waiting get the first messages, in the order they began to wait.
            while !state.waiterOrder.isEmpty, let message = rest.first {
                let id = state.waiterOrder.removeFirst()
                guard let waiter = state.waiters.removeValue(forKey: id) else { continue }
                handed.append((waiter, message))
                rest = rest.dropFirst()
            }
            if !rest.isEmpty {
                state.append(rest.count == messages.count ? messages : Array(rest), bytes: State.size(of: rest))
                if !state.watchers.isEmpty {
                    watchers = Array(state.watchers.values)
                    state.watchers.removeAll()
                }
            }
            if state.isFull(capacity: self.capacity, byteCapacity: self.byteCapacity), !state.paused {
                state.paused = true
                return true
            }
            return false
        }
        for (waiter, message) in handed { waiter.resume(returning: message) }
        for watcher in watchers { watcher.resume(returning: true) }
        if pause { self.transport?.setReadingPaused(true, reason: .inboxFull) }
    }

    /// The stream ended: waiters fail now, later receivers after the queued messages.
    func end(_ error: IntercomError) {
        let (waiters, watchers) = self.state.withLock {
            state -> ([UnsafeContinuation<InboundMessage, any Error>], [UnsafeContinuation<Bool, any Error>]) in
            if state.ended == nil { state.ended = error }
            state.syncReadiness()
            defer {
                state.waiters.removeAll()
                state.waiterOrder.removeAll()
                state.watchers.removeAll()
            }
            return (Array(state.waiters.values), Array(state.watchers.values))
        }
        for waiter in waiters { waiter.resume(throwing: error) }
        for watcher in watchers { watcher.resume(throwing: error) }
    }

    /// The next queued message, if one is there now; throws once the stream
    /// ended and nothing is left.
    func tryNext() throws(IntercomError) -> InboundMessage? {
        let (message, resume) = try self.state.withLock { state throws(IntercomError) -> (InboundMessage?, Bool) in
            if let message = state.popFirst() {
                return (message, state.resumesReading(capacity: self.capacity, byteCapacity: self.byteCapacity))
            }
            if let ended = state.ended { throw ended }
            return (nil, false)
        }
        if resume { self.transport?.setReadingPaused(false, reason: .inboxFull) }
        return message
    }

    nonisolated(nonsending) func next(timeout: Duration?) async throws(IntercomError) -> InboundMessage {
        enum Immediate { case message(InboundMessage, resume: Bool), failure(IntercomError) }
        let immediate = self.state.withLock { state -> Immediate? in
            if let message = state.popFirst() {
                return .message(message, resume: state.resumesReading(capacity: self.capacity, byteCapacity: self.byteCapacity))
            }
            if let ended = state.ended { return .failure(ended) }
            return nil
        }
        switch immediate {
        case .message(let message, let resume):
            if resume { self.transport?.setReadingPaused(false, reason: .inboxFull) }
            return message
        case .failure(let error):
            throw error
        case nil:
            break
        }
        let cancelled = IntercomError(.cancelled, "receive was cancelled")
        return try await self.suspend(
            timeout: timeout,
            expired: { inbox, id in inbox.fail(id, IntercomError(.timeout, "no message arrived within \(timeout ?? .zero)")) },
            cancelled: { inbox, id in inbox.fail(id, cancelled) }
        ) { state, id, continuation in
            if let message = state.popFirst() { return .success(message) }
            if let ended = state.ended { return .failure(ended) }
            if Task.isCancelled { return .failure(cancelled) }
            state.waiters[id] = continuation
            state.waiterOrder.append(id)
            return nil
        }
    }

    /// Suspends the calling task until what `register` stored its continuation
    /// under is resumed — or answers at once if `register` returns an outcome
    /// (checked under the lock, so nothing arriving meanwhile is missed). After
    /// `timeout`, `expired` ends the wait; on cancellation, `cancelled` does.
    nonisolated(nonsending) private func suspend<T: Sendable>(
        timeout: Duration?,
        expired: @escaping @Sendable (Inbox, UInt64) -> Void,
        cancelled: @escaping @Sendable (Inbox, UInt64) -> Void,
        register: @escaping (inout State, UInt64, UnsafeContinuation<T, any Error>) -> Result<T, IntercomError>?
    ) async throws(IntercomError) -> T {
        let id = self.state.withLock { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let timer = timeout.flatMap { timeout in
            self.transport?.schedule(after: timeout) { [weak self] in
                if let self { expired(self, id) }
            }
        }
        defer { timer?.cancel() }
        do {
            return try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
                    let now = self.state.withLock { state in register(&state, id, continuation) }
                    if let now { continuation.resume(with: now.mapError { $0 as any Error }) }
                }
            } onCancel: {
                cancelled(self, id)
            }
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.cancelled, "\(error)")
        }
    }

    /// Waits for at least one message, then takes up to `limit` in all under one lock.
    nonisolated(nonsending) func nextBatch(limit: Int, timeout: Duration?) async throws(IntercomError) -> [InboundMessage] {
        let limit = max(1, limit)
        while true {
            let (ready, resume, ended) = self.state.withLock { state -> ([InboundMessage], Bool, IntercomError?) in
                let messages = state.take(upTo: limit)
                return (messages, !messages.isEmpty && state.resumesReading(capacity: self.capacity, byteCapacity: self.byteCapacity), state.ended)
            }
            if resume { self.transport?.setReadingPaused(false, reason: .inboxFull) }
            if !ready.isEmpty { return ready }
            if let ended { throw ended }
            // Nothing queued: wait until a batch is, then take it whole. (Waiting as a
            // receiver of one message had the arriving batch split — the first
            // message handed over, the rest copied — and joined again: two copies
            // of every message.) Another receiver may take it first: then wait again.
            guard try await self.waitUntilQueued(timeout: timeout) else {
                throw IntercomError(.timeout, "no message arrived within \(timeout ?? .zero)")
            }
        }
    }

    /// Whether a message is queued now, or the stream has ended (so receiving
    /// would not wait either way).
    var isReady: Bool {
        self.state.withLock { $0.count > 0 || $0.ended != nil }
    }

    /// Whether a message is queued now.
    var hasQueuedMessage: Bool {
        self.state.withLock { $0.count > 0 }
    }

    /// Waits until a message is queued, without taking it: true then, false if
    /// none came within `timeout`; throws once the stream ended with nothing left.
    nonisolated(nonsending) func waitUntilQueued(timeout: Duration?) async throws(IntercomError) -> Bool {
        let now = self.state.withLock { state -> Result<Bool, IntercomError>? in
            if state.count > 0 { return .success(true) }
            if let ended = state.ended { return .failure(ended) }
            return nil
        }
        if let now { return try now.get() }
        let cancelled = IntercomError(.cancelled, "waiting for a message was cancelled")
        return try await self.suspend(
            timeout: timeout,
            expired: { inbox, id in inbox.stopWatching(id, with: .success(false)) },
            cancelled: { inbox, id in inbox.stopWatching(id, with: .failure(cancelled)) }
        ) { state, id, continuation in
            if state.count > 0 { return .success(true) }
            if let ended = state.ended { return .failure(ended) }
            if Task.isCancelled { return .failure(cancelled) }
            state.watchers[id] = continuation
            return nil
        }
    }

    private func stopWatching(_ id: UInt64, with result: Result<Bool, IntercomError>) {
        let watcher = self.state.withLock { $0.watchers.removeValue(forKey: id) }
        watcher?.resume(with: result.mapError { $0 as any Error })
    }

    private func fail(_ id: UInt64, _ error: IntercomError) {
        let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
        waiter?.resume(throwing: error)
    }
}

/// The unsolicited messages of a ``Peer``, decoded as `Element`.
///
/// Iteration ends by throwing ``IntercomError`` (`peerLost` or `closed`) once the
/// connection has ended and every message that arrived before has been delivered.
public struct MessageSequence<Element: Decodable>: AsyncSequence, Sendable {
    let peer: Peer

    /// The iterator.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let peer: Peer

        /// The next message.
        public mutating func next() async throws(IntercomError) -> Element? {
            try await self.peer.receive(as: Element.self)
        }
    }

    /// Makes an iterator that receives from the peer's inbox.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(peer: self.peer) }
}
