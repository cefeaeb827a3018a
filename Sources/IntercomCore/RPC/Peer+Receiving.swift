@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization

// MARK: - Receiving frames

extension Peer: FrameReceiver {
    func transportActive() {}

    /// The connection drained after being full: tell subscribers what they missed
    /// now, rather than with the next event (which may never come).
    func transportWritable() {
        let owed = self.remoteTopics.withLock { state -> [String: Int] in
            defer { state.missed.removeAll() }
            return state.missed
        }
        for (topic, missed) in owed where missed > 0 {
            var frame = ByteBuffer()
            let mark = FrameHeader.begin(into: &frame, kind: .event, flags: .lagNotice, id: UInt64(missed), method: topic)
            FrameHeader.finish(mark, in: &frame)
            if !self.transmitIfWritable(frame) { self.oweMissedEvents(missed, of: topic) }
        }
    }

    func receive(_ frame: consuming Frame) {
        self.arrivals.count(frame)
        if frame.flags.contains(.compressed) {
            do {
                frame.payload = try Compression.decompress(frame.payload, limit: self.configuration.limits.maxFrameSize)
                frame.flags.remove(.compressed)
            } catch {
                self.violated(error)
                return
            }
        }
        if frame.kind == .streamItem {
            self.collectStreamItem(frame)
            return
        }
        // Items collected so far come before whatever this frame says (their stream's end, say).
        if !self.arrivals.streamItems.pointee.items.isEmpty { self.deliverStreamItems() }
        switch frame.kind {
        case .reply, .error, .pong:
            // Counted before the caller can resume: `traffic` read after a call includes its reply.
            self.flushTally()
            self.complete(frame)
        case .call:
            self.accept(frame)
        case .message:
            if let method = frame.method, let router, router.hasOwnHandler(for: method) {
                self.accept(frame)
            } else {
                if let router, router.traffic.isActive { self.tappedInboxMessage(frame, into: router.traffic) }
                // Collected until the end of this read, then queued under one lock.
                let collected = self.arrivals.append(
                    InboundMessage(method: frame.method, payload: frame.payload, codec: self.codec, descriptors: frame.descriptors))
                // Batches no larger than what `receiveMessages()` takes by default pass
                // through the inbox whole.
                if collected >= Self.defaultReceiveLimit { self.flushArrivals() }
            }
        case .cancel:
            self.cancelHandler(frame.id)
        case .ping:
            self.transmit(FrameHeader.empty(kind: .pong, id: frame.id))
        case .credit:
            self.grantCredit(frame)
        case .streamEnd:
            self.endInput(frame)
        case .goodbye:
            if frame.id == Hello.suspendingGoodbyeID {
                self.suspensionArrived()
            } else {
                self.withState { $0.goodbyeArrived() }
            }
        case .event:
            self.deliverEvent(frame)
        case .subscribe:
            if let topic = frame.method {
                self.remoteTopics.withLock { $0.subscribed[topic] = frame.flags.contains(.jsonPayload) }
            }
        case .unsubscribe:
            if let topic = frame.method {
                self.remoteTopics.withLock { state in
                    state.subscribed[topic] = nil
                    state.missed[topic] = nil
                }
            }
        default:
            // hello twice, welcome, subscribe, …: not part of this version's conversation.
            self.violated(ProtocolError(.malformedHeader, "unexpected \(frame.kind) frame after the handshake"))
        }
    }

    /// An event arrived: hand it to every local subscription of its topic.
    func deliverEvent(_ frame: Frame) {
        guard let topic = frame.method else { return }
        // A read: no statistics change, so not through `withState`.
        let queues = self.state.withLock { $0.subscribers(of: topic) }
        let missed = Int(clamping: frame.id)
        if frame.flags.contains(.lagNotice) {
            for queue in queues { queue.addMissed(missed) }
            return
        }
        if self.tracer != nil, !queues.isEmpty { self.traceDelivery(of: topic, carrier: frame.traceContext) }
        for queue in queues where !queue.append(topic: topic, frame.payload, missedBefore: missed) {
            // Overflowed under `.disconnect`: the subscription is over.
            self.unsubscribe(queue)
        }
    }

    func endOfReadBatch() {
        self.deliverStreamItems()
        self.flushArrivals()
        self.flushTally()
    }

    /// Adds the frames counted so far in this read to ``traffic``.
    func flushTally() {
        let (frames, bytes) = self.arrivals.takeTally()
        if frames > 0 { self.received.add(frames: frames, bytes: bytes) }
    }

    /// Hands the messages collected so far to the inbox. The array itself moves
    /// (the inbox keeps it as one batch), so each message is not copied again.
    func flushArrivals() {
        guard !self.arrivals.isEmpty else { return }
        self.inbox.append(contentsOf: self.arrivals.takeAll())
    }

    /// A reply, error or pong for a call of ours.
    func complete(_ frame: Frame) {
        if frame.id == 0, frame.kind == .pong { return }  // a heartbeat's answer: its arrival was the point
        if frame.id == 0, frame.kind == .error {
            // An error about the whole connection: the other side is about to close it.
            let body = try? ErrorBody(from: frame.payload)
            self.logger.warning("peer reported a connection error", metadata: ["error": "\(body?.message ?? "?")"])
            return
        }
        let removal = self.withState { $0.callEnded(frame.id) }
        for waiter in removal.drained { waiter(true) }
        guard let call = removal.call else {
            // Late reply (the call timed out or was cancelled): dropped.
            self.lateReplies.add(1, ordering: .relaxed)
            self.statisticsChanged()
            return
        }
        if frame.kind == .error {
            call.continuation?.resume(throwing: self.remoteError(from: frame, method: call.method))
        } else {
            call.continuation?.resume(returning: frame)
        }
    }

    func remoteError(from frame: Frame, method: String?) -> any Error {
        let context = IntercomError.Context(method: method, callID: frame.id, peer: self.remote.name)
        guard let body = try? ErrorBody(from: frame.payload) else {
            return IntercomError(.protocolViolation, "error frame from '\(self.remote.name)' does not parse", context: context)
        }
        let codec = frame.flags.contains(.jsonPayload) ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        if frame.flags.contains(.typedError), let decode = self.configuration.remoteErrors.decoders[body.typeName],
            let error = try? decode(body.details, codec)
        {
            return error
        }
        return IntercomError(
            IntercomError.Code(errorFrameCode: body.code), body.message, context: context,
            remoteType: body.typeName.isEmpty ? nil : body.typeName)
    }

    /// A well-formed frame broke the conversation's rules: read nothing more,
    /// tell the other side why (an error frame, id 0) and close.
    func violated(_ error: ProtocolError) {
        self.transportFailed(error)
        self.transport.setReadingPaused(true, reason: .violation)
        self.transmit(ErrorBody(connectionError: error).frame(id: 0))
        self.transport.close()
    }

    func transportFailed(_ error: ProtocolError) {
        self.logger.warning("protocol violation; closing the connection", metadata: ["error": "\(error)"])
        let reason = IntercomError(error, peer: self.remote.name)
        if let ending = self.withState({ $0.beginClosing(reason) }) { self.failCalls(ending, reason: reason) }
    }

    func transportClosed() {
        self.endOfReadBatch()
        let closure = self.withState { state in
            state.transportClosed { saidGoodbye in
                let how =
                    saidGoodbye ? "closed the connection" : "went away without saying goodbye (exited, crashed or was killed)"
                return IntercomError(
                    .peerLost, "peer '\(self.remote.name)' (pid \(self.remote.reportedPID)) \(how)", context: .init(peer: self.remote.name))
            }
        }
        guard let closure else { return }
        self.metrics?.connectionClosed()
        self.failCalls(closure.calls, reason: closure.reason)
        self.endStreams(closure.reason)
        self.inbox.end(closure.reason)
        for queue in closure.subscriptions { queue.end(.failed(closure.reason)) }
        for timer in closure.handlers.timers { timer.cancel() }
        if closure.handlers.releaseMemory { ReleasedMemory.handBack() }
        for task in closure.handlers.tasks { task.cancel() }
        for waiter in closure.closeWaiters { waiter() }
    }
}
