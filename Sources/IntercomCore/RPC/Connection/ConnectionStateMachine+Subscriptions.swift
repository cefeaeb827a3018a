internal import IntercomTransport
// This side's subscriptions to the other side's events, in the connection's
// state: whether the connection ended decides whether a subscription is taken,
// under the same lock that ends them all.
extension ConnectionStateMachine {
    /// What subscribing leaves to do.
    enum SubscribeOutcome {
        /// Taken; `firstOfTopic`: tell the other side (a `subscribe` frame).
        case subscribed(firstOfTopic: Bool)
        /// The connection ended: end the queue with this reason at once.
        case ended(IntercomError)
    }

    /// Adds `queue` to its topic's subscriptions, unless the connection closed.
    mutating func subscribe(_ queue: EventQueue) -> SubscribeOutcome {
        if case .closed(let reason) = self.phase { return .ended(reason) }
        let first = self.subscriptions[queue.topic] == nil
        self.subscriptions[queue.topic, default: [:]][ObjectIdentifier(queue)] = queue
        return .subscribed(firstOfTopic: first)
    }

    /// Removes `queue`. Returns whether it was the topic's last subscription on a
    /// connection still up (then tell the other side: an `unsubscribe` frame).
    mutating func unsubscribe(_ queue: EventQueue) -> Bool {
        guard self.subscriptions[queue.topic]?.removeValue(forKey: ObjectIdentifier(queue)) != nil else { return false }
        guard self.subscriptions[queue.topic]?.isEmpty == true else { return false }
        self.subscriptions[queue.topic] = nil
        return !self.isClosed
    }

    /// The queues an event of `topic` goes to: its own and those of `*`.
    func subscribers(of topic: String) -> [EventQueue] {
        var queues: [EventQueue] = []
        if let exact = self.subscriptions[topic] { queues.append(contentsOf: exact.values) }
        if let all = self.subscriptions["*"] { queues.append(contentsOf: all.values) }
        return queues
    }

    /// Every subscription, taken out (the connection's end ends them).
    mutating func takeSubscriptions() -> [EventQueue] {
        defer { self.subscriptions.removeAll() }
        return self.subscriptions.values.flatMap { $0.values }
    }
}
