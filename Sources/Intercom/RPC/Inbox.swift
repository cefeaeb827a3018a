public import IntercomWire
public import NIOCore
internal import Synchronization
internal import DequeModule

/// A one-way message that arrived without a handler, still encoded.
public struct InboundMessage: Sendable {
    /// The method the sender named, if any.
    public let method: String?
    /// The encoded payload.
    public let payload: ByteBuffer
    /// The connection's codec.
    public let codec: PayloadCodec

    /// Decodes the payload as `type`.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` naming the type and what did not match.
    public func decode<T: Decodable>(as type: T.Type = T.self) throws(IntercomError) -> T {
        try self.codec.decodePayload(
            T.self, from: self.payload, what: self.method.map { "message '\($0)'" } ?? "message",
            context: .init(method: self.method))
    }
}

/// The bounded queue of unsolicited messages. When it holds `capacity` messages
/// the connection stops reading until a receiver takes one.
final class Inbox: Sendable {
    private struct State {
        var messages = Deque<InboundMessage>()
        var waiters: [UInt64: UnsafeContinuation<InboundMessage, any Error>] = [:]
        var waiterOrder = Deque<UInt64>()
        var nextWaiterID: UInt64 = 0
        var ended: IntercomError?
        var paused = false
    }

    private let state = Mutex(State())
    private let capacity: Int
    nonisolated(unsafe) weak var transport: (any FrameTransport)?

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// On the transport thread: messages arrived (in order), queued under one lock.
    func append(contentsOf messages: [InboundMessage]) {
        var handed: [(UnsafeContinuation<InboundMessage, any Error>, InboundMessage)] = []
        let pause = self.state.withLock { state -> Bool in
            for message in messages {
                var waiter: UnsafeContinuation<InboundMessage, any Error>?
                while waiter == nil, let id = state.waiterOrder.popFirst() {
                    waiter = state.waiters.removeValue(forKey: id)
                }
                if let waiter {
                    handed.append((waiter, message))
                } else {
                    state.messages.append(message)
                }
            }
            if state.messages.count >= self.capacity, !state.paused {
                state.paused = true
                return true
            }
            return false
        }
        for (waiter, message) in handed { waiter.resume(returning: message) }
        if pause { self.transport?.setReadingPaused(true, reason: .inboxFull) }
    }

    /// The stream ended: waiters fail now, later receivers after the queued messages.
    func end(_ error: IntercomError) {
        let waiters = self.state.withLock { state -> [UnsafeContinuation<InboundMessage, any Error>] in
            if state.ended == nil { state.ended = error }
            defer { state.waiters.removeAll(); state.waiterOrder.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// The next queued message, if one is there now; throws once the stream
    /// ended and nothing is left.
    func tryNext() throws(IntercomError) -> InboundMessage? {
        let (message, resume) = try self.state.withLock { state throws(IntercomError) -> (InboundMessage?, Bool) in
            if let message = state.messages.popFirst() {
                let resume = state.paused && state.messages.count < self.capacity / 2 + 1
                if resume { state.paused = false }
                return (message, resume)
            }
            if let ended = state.ended { throw ended }
            return (nil, false)
        }
        if resume { self.transport?.setReadingPaused(false, reason: .inboxFull) }
        return message
    }

    func next(timeout: Duration?) async throws(IntercomError) -> InboundMessage {
        enum Immediate { case message(InboundMessage, resume: Bool), failure(IntercomError) }
        let immediate = self.state.withLock { state -> Immediate? in
            if let message = state.messages.popFirst() {
                let resume = state.paused && state.messages.count < self.capacity / 2 + 1
                if resume { state.paused = false }
                return .message(message, resume: resume)
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
        let id = self.state.withLock { state in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let timer = timeout.flatMap { timeout in
            self.transport?.schedule(after: timeout) { [weak self] in
                self?.fail(id, IntercomError(.timeout, "no message arrived within \(timeout)"))
            }
        }
        defer { timer?.cancel() }
        do {
            return try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<InboundMessage, any Error>) in
                    let immediate = self.state.withLock { state -> Result<InboundMessage, IntercomError>? in
                        if let message = state.messages.popFirst() { return .success(message) }
                        if let ended = state.ended { return .failure(ended) }
                        if Task.isCancelled { return .failure(IntercomError(.cancelled, "receive was cancelled")) }
                        state.waiters[id] = continuation
                        state.waiterOrder.append(id)
                        return nil
                    }
                    if let immediate { continuation.resume(with: immediate) }
                }
            } onCancel: {
                self.fail(id, IntercomError(.cancelled, "receive was cancelled"))
            }
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.cancelled, "\(error)")
        }
    }

    /// Waits for at least one message, then takes up to `limit` in all under one lock.
    func nextBatch(limit: Int, timeout: Duration?) async throws(IntercomError) -> [InboundMessage] {
        let first = try await self.next(timeout: timeout)
        guard limit > 1 else { return [first] }
        var batch: [InboundMessage] = []
        let resume = self.state.withLock { state -> Bool in
            let count = min(limit - 1, state.messages.count)
            batch.reserveCapacity(count + 1)
            batch.append(first)
            for _ in 0..<count { batch.append(state.messages.removeFirst()) }
            let resume = state.paused && state.messages.count < self.capacity / 2 + 1
            if resume { state.paused = false }
            return resume
        }
        if resume { self.transport?.setReadingPaused(false, reason: .inboxFull) }
        return batch
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
