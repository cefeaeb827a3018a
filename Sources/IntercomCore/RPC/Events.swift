@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import Synchronization
internal import DequeModule

/// What a subscription yields: an event, or a marker that events were lost.
public enum EventDelivery<Value: Sendable>: Sendable {
    /// The next event on the topic.
    case event(Value)
    /// `missed` events were dropped here because the subscriber fell behind (its
    /// queue was full, or the publisher's connection to it was).
    case lagged(missed: Int)
}

extension EventDelivery: Equatable where Value: Equatable {}

/// What a subscription does when its queue is full. (A struct, not an enum:
/// more policies may come without breaking a user's `switch`.)
public struct EventOverflowPolicy: Sendable, Hashable {
    enum Action: Hashable { case dropOldest, disconnect }
    let action: Action

    /// Drop the oldest queued event and report the loss with ``EventDelivery/lagged(missed:)``.
    public static let dropOldest = EventOverflowPolicy(action: .dropOldest)
    /// End the subscription with ``IntercomError/Code/busy`` (and unsubscribe).
    public static let disconnect = EventOverflowPolicy(action: .disconnect)
}

/// One subscription's bounded queue of still-encoded events.
final class EventQueue: Sendable {
    private struct State {
        var events = Deque<(topic: String, payload: ByteBuffer)>()
        var missed = 0
        var waiter: UnsafeContinuation<Void, Never>?
        var ended: Ending?
        var receivedTotal = 0
        var missedTotal = 0
    }

    let topic: String
    let capacity: Int
    let policy: EventOverflowPolicy
    private let state = Locked(State())

    init(topic: String, capacity: Int, policy: EventOverflowPolicy) {
        self.topic = topic
        self.capacity = max(1, capacity)
        self.policy = policy
    }

    /// On the connection's thread: an event arrived after `missedBefore` the
    /// publisher could not send. Returns false if the subscription overflowed
    /// under `.disconnect` and has ended.
    func append(topic: String, _ payload: ByteBuffer, missedBefore: Int) -> Bool {
        let (waiter, keep) = self.state.withLock { state -> (UnsafeContinuation<Void, Never>?, Bool) in
            guard state.ended == nil else { return (nil, true) }
            state.missed += missedBefore
            state.missedTotal += missedBefore
            if state.events.count >= self.capacity {
                switch self.policy.action {
                case .dropOldest:
                    state.events.removeFirst()
                    state.missed += 1
                    state.missedTotal += 1
                case .disconnect:
                    state.ended = .failed(IntercomError(
                        .busy,
                        "subscription to '\(self.topic)' overflowed its \(self.capacity)-event queue; the subscriber was disconnected (policy .disconnect)"))
                    defer { state.waiter = nil }
                    return (state.waiter, false)
                }
            }
            state.events.append((topic, payload))
            defer { state.waiter = nil }
            return (state.waiter, true)
        }
        waiter?.resume()
        return keep
    }

    /// On the connection's thread: the publisher dropped `count` events for us.
    func addMissed(_ count: Int) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            guard state.ended == nil, count > 0 else { return nil }
            state.missed += count
            state.missedTotal += count
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Why a subscription ended: its subscriber let go (the sequence just ends),
    /// or the connection did (the sequence throws why).
    enum Ending: Sendable {
        case unsubscribed
        case failed(IntercomError)
    }

    /// Ends the subscription after what is queued.
    func end(_ ending: Ending) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            if state.ended == nil { state.ended = ending }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    enum Next {
        case event(topic: String, payload: ByteBuffer)
        case lagged(Int)
        case end(Ending)
        /// The waiting task was cancelled (the subscription itself goes on).
        case cancelled
    }

    /// The next delivery; waits if there is none, until the waiting task is
    /// cancelled. One consumer at a time.
    func next() async -> Next {
        while true {
            let ready = self.state.withLock { state -> Next? in
                if state.missed > 0 {
                    defer { state.missed = 0 }
                    return .lagged(state.missed)
                }
                if let event = state.events.popFirst() {
                    state.receivedTotal += 1
                    return .event(topic: event.topic, payload: event.payload)
                }
                if let ended = state.ended { return .end(ended) }
                return nil
            }
            if let ready { return ready }
            if Task.isCancelled { return .cancelled }
            await withTaskCancellationHandler {
                await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                    let wakeNow = self.state.withLock { state -> Bool in
                        // Cancelled before the waiter was stored: the handler found none to wake.
                        if state.missed > 0 || !state.events.isEmpty || state.ended != nil || Task.isCancelled { return true }
                        state.waiter = continuation
                        return false
                    }
                    if wakeNow { continuation.resume() }
                }
            } onCancel: {
                let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
                    defer { state.waiter = nil }
                    return state.waiter
                }
                waiter?.resume()
            }
        }
    }

    /// What a subscription's iterator hands on (as events or JSON text).
    enum Delivery {
        case event(topic: String, payload: ByteBuffer)
        case lagged(Int)
    }

    /// ``next()`` as both iterators end: nil once unsubscribed, the connection's
    /// end thrown, `CancellationError` if the waiting task was cancelled.
    func nextDelivery() async throws -> Delivery? {
        switch await self.next() {
        case .event(let topic, let payload): return .event(topic: topic, payload: payload)
        case .lagged(let missed): return .lagged(missed)
        case .end(.unsubscribed): return nil
        case .end(.failed(let error)): throw error
        case .cancelled: throw CancellationError()
        }
    }

    /// Delivered so far, and lost so far (counted when the loss was noticed).
    var counts: (received: Int, missed: Int) {
        self.state.withLock { ($0.receivedTotal, $0.missedTotal) }
    }

    /// Events waiting to be taken.
    var queued: Int { self.state.withLock { $0.events.count } }
}

/// The events of one topic from one connection, decoded as `Value`.
///
/// ```swift
/// for try await delivery in camera.events("frames.ready", as: FrameReady.self) {
///     switch delivery {
///     case .event(let frame): show(frame)
///     case .lagged(let missed): print("missed \(missed) frames")
///     }
/// }
/// ```
///
/// Iteration ends with an error when the connection ends (`peerLost`/`closed`) or
/// the subscription overflows under ``EventOverflowPolicy/disconnect`` (`busy`).
/// A task waiting for the next event that is cancelled gets `CancellationError`
/// (the subscription stays; a later iteration carries on). Cancel the
/// subscription itself (or let the last iterator go) with ``cancel()``.
public struct EventSubscription<Value: Decodable & Sendable>: AsyncSequence, Sendable {
    /// An event, or a notice of how many were lost.
    public typealias Element = EventDelivery<Value>

    let queue: EventQueue
    let peer: Peer

    /// The topic.
    public var topic: String { self.queue.topic }

    /// Events taken so far and events lost so far (the counts a publisher's
    /// "sent" must equal, with what is still queued).
    public var counts: (received: Int, missed: Int, queued: Int) {
        let (received, missed) = self.queue.counts
        return (received, missed, self.queue.queued)
    }

    /// Stops the subscription: tells the publisher, ends iteration with `closed`.
    public func cancel() {
        self.peer.unsubscribe(self.queue)
    }

    /// Iterates the deliveries.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: EventQueue
        let codec: PayloadCodec

        /// The next delivery; throws when the subscription ends.
        public mutating func next() async throws -> EventDelivery<Value>? {
            switch try await self.queue.nextDelivery() {
            case .event(_, let payload)?:
                return .event(
                    try self.codec.decodePayload(
                        Value.self, from: payload, what: "event on '\(self.queue.topic)'",
                        context: .init(method: self.queue.topic)))
            case .lagged(let missed)?:
                return .lagged(missed: missed)
            case nil:
                return nil
            }
        }
    }

    /// An iterator over the deliveries.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(queue: self.queue, codec: self.peer.codec)
    }
}

/// What a JSON subscription yields.
public enum JSONEvent: Sendable, Hashable {
    /// An event: its topic and its payload as JSON text.
    case event(topic: String, json: String)
    /// `missed` events were dropped because the subscriber fell behind.
    case lagged(missed: Int)
}

/// Events as JSON text (see ``Peer/jsonEvents(_:bufferSize:)``). Ends with an
/// error when the connection ends.
public struct JSONEventSubscription: AsyncSequence, Sendable {
    /// An event as JSON text, or a notice of how many were lost.
    public typealias Element = JSONEvent

    let queue: EventQueue
    let peer: Peer

    /// Stops the subscription; iteration ends normally.
    public func cancel() {
        self.peer.unsubscribe(self.queue)
    }

    /// Iterates the deliveries.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: EventQueue

        /// The next delivery; throws when the connection ends.
        public mutating func next() async throws -> JSONEvent? {
            switch try await self.queue.nextDelivery() {
            case .event(let topic, let payload)?:
                return .event(topic: topic, json: String(buffer: payload))
            case .lagged(let missed)?:
                return .lagged(missed: missed)
            case nil:
                return nil
            }
        }
    }

    /// An iterator over the deliveries.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: self.queue) }
}

/// The outcome of publishing one event on one connection.
public enum PublishOutcome: Sendable, Hashable {
    /// Queued for sending to a subscriber.
    case sent
    /// The subscriber's connection is full: dropped, and reported to it as lag with the next event it gets.
    case dropped
    /// Nobody on this connection subscribes to the topic.
    case notSubscribed
}

/// The result of publishing one event to every subscriber of a service.
public struct PublishReport: Sendable, Hashable {
    /// Subscribers the event was sent to (`name (pid N)`).
    public var sentTo: [String] = []
    /// Subscribers it was dropped for because they fell behind.
    public var droppedFor: [String] = []

    package init() {}
}
