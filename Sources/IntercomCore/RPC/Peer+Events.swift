@_spi(IntercomInternals) public import IntercomTransport
package import IntercomWire
package import NIOCore
internal import Tracing

// Events: publishing to subscribers on the other side, and subscribing to its topics.
extension Peer {

    /// Subscribes to the other side's events on `topic`.
    ///
    /// Events wait in a queue of `bufferSize`; when it is full, `overflow` decides:
    /// drop the oldest and deliver ``EventDelivery/lagged(missed:)``, or end the
    /// subscription. The connection keeps reading either way, so a slow subscriber
    /// never holds up the publisher or its calls.
    public func events<Value: Decodable & Sendable>(
        _ topic: String, as type: Value.Type = Value.self, bufferSize: Int = 1024,
        overflow: EventOverflowPolicy = .dropOldest
    ) -> EventSubscription<Value> {
        EventSubscription(queue: self.subscribe(topic, bufferSize: bufferSize, overflow: overflow, json: false), peer: self)
    }

    /// Subscribes to the other side's events on `topic` (`*`: every topic) as JSON
    /// text, whatever codec the connection uses: for tools like `intercom watch`.
    /// Use a connection of its own for it (typed subscriptions to the same topics
    /// on the same connection take precedence and arrive in the connection's codec).
    public func jsonEvents(_ topic: String = "*", bufferSize: Int = 1024) -> JSONEventSubscription {
        JSONEventSubscription(queue: self.subscribe(topic, bufferSize: bufferSize, overflow: .dropOldest, json: true), peer: self)
    }

    func subscribe(_ topic: String, bufferSize: Int, overflow: EventOverflowPolicy, json: Bool) -> EventQueue {
        let queue = EventQueue(topic: topic, capacity: bufferSize, policy: overflow)
        switch self.withState({ $0.subscribe(queue) }) {
        case .ended(let reason):
            queue.end(.failed(reason))
        case .subscribed(let firstOfTopic):
            guard firstOfTopic else { break }
            var frame = ByteBuffer()
            let mark = FrameHeader.begin(into: &frame, kind: .subscribe, flags: json ? .jsonPayload : [], id: 0, method: topic)
            FrameHeader.finish(mark, in: &frame)
            self.transmit(frame)
        }
        return queue
    }

    /// Ends one subscription; the other side is told when its topic has no subscriber left.
    func unsubscribe(_ queue: EventQueue) {
        let last = self.withState { $0.unsubscribe(queue) }
        queue.end(.unsubscribed)
        if last {
            var frame = ByteBuffer()
            let mark = FrameHeader.begin(into: &frame, kind: .unsubscribe, id: 0, method: queue.topic)
            FrameHeader.finish(mark, in: &frame)
            self.transmit(frame)
        }
    }

    /// Publishes an event to the other side if it subscribes to `topic`. Never
    /// waits: if the connection's outbound buffer is full the event is dropped and
    /// the subscriber learns how many it missed with the next event it gets.
    ///
    /// - Throws: ``IntercomError`` `invalidPayload` if `value` does not encode,
    ///   `frameTooLarge` if it is over the other side's limit.
    @discardableResult
    public func publish<Value: Encodable>(_ topic: String, _ value: Value) throws(IntercomError) -> PublishOutcome {
        guard let json = self.subscriptionFormat(for: topic) else { return .notSubscribed }
        let codec = json ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        return try self.publishEncoded(topic, payload: Self.encodeEvent(value, with: codec, topic: topic), json: json)
    }

    /// An event's payload encoded with `codec`.
    /// Publishes an event to each of `peers` subscribed to `topic` (a service's
    /// clients), encoding it once for all binary subscribers that share a codec.
    /// Never waits: a peer whose connection is full misses the event and is told
    /// how many it missed with the next one it gets.
    ///
    /// - Returns: which peers it was sent to and which missed it.
    /// - Throws: ``IntercomError`` `invalidPayload` if `value` does not encode.
    package static func publish<Value: Encodable>(
        _ topic: String, _ value: Value, to peers: [Peer]
    ) throws(IntercomError) -> PublishReport {
        var report = PublishReport()
        // Encoded once, with the codec of the first binary subscriber; subscribers
        // that want JSON or agreed on another codec get their own encoding.
        var shared: (codec: PayloadCodec, payload: ByteBuffer)?
        for peer in peers {
            guard let json = peer.subscriptionFormat(for: topic) else { continue }
            let outcome: PublishOutcome
            if json || (shared.map { $0.codec != peer.codec } ?? false) {
                outcome = try peer.publish(topic, value)
            } else {
                if shared == nil { shared = (peer.codec, try Peer.encodeEvent(value, with: peer.codec, topic: topic)) }
                outcome = try peer.publishEncoded(topic, payload: shared!.payload)
            }
            let label = "\(peer.remote.name) (pid \(peer.remote.reportedPID))"
            switch outcome {
            case .sent: report.sentTo.append(label)
            case .dropped: report.droppedFor.append(label)
            case .notSubscribed: break
            }
        }
        return report
    }

    package static func encodeEvent<Value: Encodable>(_ value: Value, with codec: PayloadCodec, topic: String)
        throws(IntercomError) -> ByteBuffer
    {
        var payload = ByteBuffer()
        do {
            try codec.encode(value, into: &payload)
        } catch {
            throw IntercomError(.invalidPayload, "\(Value.self) does not encode: \(error)", context: .init(method: topic), cause: error)
        }
        return payload
    }

    /// Whether the other side subscribes to `topic` (or to every topic).
    public func isSubscribed(to topic: String) -> Bool {
        self.subscriptionFormat(for: topic) != nil
    }

    /// How the other side subscribed to `topic`: nil if it did not, true if it asked for JSON.
    package func subscriptionFormat(for topic: String) -> Bool? {
        self.remoteTopics.withLock { $0.subscription(for: topic) }
    }

    /// Publishes an already-encoded event (one encoding for many subscribers).
    package func publishEncoded(_ topic: String, payload: ByteBuffer, json: Bool = false) throws(IntercomError) -> PublishOutcome {
        guard payload.readableBytes <= self.remoteMaxFrameSize else {
            throw IntercomError(
                .frameTooLarge,
                "event of \(payload.readableBytes) bytes exceeds the \(self.remoteMaxFrameSize)-byte maximum frame size of peer '\(self.remote.name)'",
                context: .init(method: topic, peer: self.remote.name))
        }
        // The count of events dropped before this one travels in its id. It is taken
        // out under the lock and the frame written after it (no write under a lock);
        // if the write fails, the count goes back, one higher.
        let taken = self.remoteTopics.withLock { state -> Int? in
            guard state.subscription(for: topic) != nil else { return nil }
            return state.missed.removeValue(forKey: topic) ?? 0
        }
        guard let missed = taken else { return .notSubscribed }
        var frame = ByteBuffer()
        frame.reserveCapacity(FrameHeader.size + 3 + topic.utf8.count + payload.readableBytes)
        var mark = FrameHeader.begin(
            into: &frame, kind: .event, flags: json ? .jsonPayload : [], id: UInt64(missed), method: topic)
        // Traced: a producer span per subscriber, its context in the frame (extension tag 3).
        let traced = self.startOutgoingSpan(topic, kind: .producer)
        if let traced { mark = FrameHeader.addTraceContext(traced.carrier, to: mark, in: &frame) }
        var body = payload
        frame.writeBuffer(&body)
        FrameHeader.finish(mark, in: &frame)
        defer { traced?.span.end() }
        if self.transmitIfWritable(frame) { return .sent }
        traced?.span.attributes["intercom.dropped"] = true
        self.oweMissedEvents(missed + 1, of: topic)
        return .dropped
    }

    /// Counts `count` events of `topic` as dropped, to report with the next one
    /// sent (or a lag notice) — unless the other side unsubscribed meanwhile.
    func oweMissedEvents(_ count: Int, of topic: String) {
        self.remoteTopics.withLock { state in
            guard state.subscription(for: topic) != nil else { return }
            state.missed[topic, default: 0] += count
        }
    }
}
