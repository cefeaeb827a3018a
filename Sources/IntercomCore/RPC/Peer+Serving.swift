#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import IntercomTransport
internal import IntercomWire
internal import Logging
internal import NIOCore
internal import Synchronization
internal import Tracing

// Serving calls: scheduling handlers under the concurrency limit and byte budget, replies and errors.
extension Peer {

    /// A call (or routed message) arrived: run it now or queue it behind the handler limit.
    ///
    /// On the transport's thread. Past the call-queue limit or the byte budget the
    /// connection stops reading (the sender's backpressure); the pause is applied
    /// here, on the transport's thread, every time a call arrives over the limit,
    /// so a resume posted from a finishing handler can never leave it reading past
    /// the budget for more than one read.
    func accept(_ frame: Frame) {
        let request = InboundCalls.Request(
            id: frame.id, isCall: frame.kind == .call, frame: frame, bytes: Self.heldBytes(frame),
            deadline: frame.timeout.map { Deadline(self.transport.now).advanced(by: $0) })
        switch self.withState({ $0.requestArrived(request) }) {
        case nil:
            return
        case .reusedID:
            self.violated(
                ProtocolError(
                    .malformedHeader,
                    frame.id == 0
                        ? "a call with id 0 (reserved for errors about the whole connection)"
                        : "call id \(frame.id) is already used by a call in flight"))
        case .queued(let pauseReading):
            if pauseReading { self.transport.setReadingPaused(true, reason: .callQueueFull) }
        case .start(let request, let armTimerAt, let pauseReading):
            if pauseReading { self.transport.setReadingPaused(true, reason: .callQueueFull) }
            self.startHandler(request, armTimerAt: armTimerAt)
        }
    }

    /// Starts the task for one call or routed message, which the state machine
    /// has marked running (outside its lock: the task is attached afterwards).
    func startHandler(_ request: InboundCalls.Request, armTimerAt: Deadline?) {
        if let armTimerAt { self.armHandlerTimer(at: armTimerAt) }
        let frame = request.frame
        let method = frame.method ?? ""
        var context = CallContext(
            method: method, callID: frame.id, deadline: request.deadline?.instant, timeout: frame.timeout,
            peer: self)
        context.expectsStream = frame.flags.contains(.stream)
        context.sendsInput = frame.flags.contains(.inputStream)
        let codec = frame.flags.contains(.jsonPayload) ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        context.jsonCaller = frame.flags.contains(.jsonPayload)
        var call = IncomingCall(context: context, payload: frame.payload, codec: codec, descriptors: frame.descriptors)
        call.traceContext = frame.traceContext
        let isCall = request.isCall
        let executor: (any TaskExecutor)? =
            self.configuration.handlerExecution == .connectionThread ? self.transport.executor : nil
        let held = request.bytes
        let task = Task(executorPreference: executor) {
            await self.run(call, isCall: isCall, held: held)
        }
        guard isCall else { return }
        if self.withState({ $0.handlerTaskCreated(task, for: frame.id) }) { task.cancel() }
    }

    /// The other side cancelled its call `id`: cancel its handler, or drop it if still queued.
    func cancelHandler(_ id: UInt64) {
        switch self.withState({ $0.cancelRequested(id) }) {
        case .cancel(let task): task.cancel()
        case .dropped(let resumeReading):
            if resumeReading { self.transport.setReadingPaused(false, reason: .callQueueFull) }
        case .none: break
        }
    }

    /// Arms the handler timer at `deadline` (outside the state lock; the state machine records it).
    func armHandlerTimer(at deadline: Deadline) {
        let timer = self.transport.schedule(after: deadline - Deadline(self.transport.now)) { [weak self] in
            self?.cancelOverdueHandlers()
        }
        self.withState { $0.handlerTimerArmed(timer, at: deadline) }?.cancel()
    }

    /// The handler timer fired: cancel every handler past its caller's deadline and
    /// arm the timer for the next one. (Handlers remove themselves when they end.)
    func cancelOverdueHandlers() {
        let now = Deadline(self.transport.now)
        let expiry = self.withState { $0.handlerTimerFired(at: now) }
        if let next = expiry.armTimerAt { self.armHandlerTimer(at: next) }
        for task in expiry.overdue { task.cancel() }
    }

    func run(_ call: IncomingCall, isCall: Bool, held: Int) async {
        let id = call.context.callID
        var reply: ByteBuffer?
        let started = self.metrics == nil ? nil : Optional(ContinuousClock.now)
        var failure: (any Error)?
        let tap = self.router.flatMap { $0.traffic.isActive && !self.isMonitorConnection.load(ordering: .relaxed) ? $0.traffic : nil }
        let arrived = tap == nil ? nil : Optional((Date(), ContinuousClock.now))
        do {
            guard let handler = self.router?.handler(for: call.method) else {
                let registered = self.router?.methods ?? []
                let closest = Self.closestMethods(to: call.method, in: registered, count: 20)
                let more = registered.count > closest.count ? ", … (\(registered.count) in all)" : ""
                throw IntercomError(
                    .unknownMethod,
                    "peer '\(self.configuration.name)' has no handler for '\(call.method)'"
                        + (registered.isEmpty ? " (it registers no methods)" : "; it handles: \(closest.joined(separator: ", "))\(more)"),
                    context: .init(method: call.method, callID: id))
            }
            let value =
                self.tracer == nil
                ? try await handler(call)
                : try await self.withIncomingSpan(call.method, carrier: call.traceContext, kind: isCall ? .server : .consumer) {
                    try await handler(call)
                }
            if isCall {
                let (frame, descriptors) = try self.encodeReply(value, id: id, method: call.method, codec: call.codec)
                if descriptors.isEmpty {
                    reply = frame
                } else {
                    try self.transmit(frame, descriptors: descriptors)  // queued at once: the value owns them until then
                }
            }
        } catch {
            failure = error
            if isCall {
                reply = self.encodeError(
                    Self.deadlineError(error, call.context, now: self.transport.now) ?? error, id: id, method: call.method, codec: call.codec)
            } else {
                self.logger.warning(
                    "handler of one-way message failed", metadata: ["method": "\(call.method)", "error": "\(error)"])
            }
        }
        // Recorded before the reply leaves: a caller that has its reply and then
        // asks for the metrics (or looks at a monitor) sees this call counted.
        if let tap, let arrived { self.tapped(call, isCall: isCall, reply: reply, failure: failure, arrived: arrived, into: tap) }
        if let metrics = self.metrics, let started, isCall {
            // A stranger's made-up method names count as one: the metrics stay bounded.
            let method = self.router?.hasOwnHandler(for: call.method) == true ? call.method : "(unknown)"
            metrics.record(
                .server, method: method, out: reply.map(FrameHeader.payloadLength(ofFrameIn:)) ?? 0,
                in: call.payload.readableBytes, duration: .now - started, error: failure)
        }
        var held = held
        if let reply, !self.transmitIfWritable(reply) {
            // Over the watermark: wait for the caller to read (or the connection to
            // end). The waiting reply counts against the byte budget meanwhile.
            let replyBytes = reply.readableBytes
            held += replyBytes
            self.withState { $0.replyWaiting(replyBytes) }
            try? await self.transport.waitUntilWritable()
            self.transmit(reply)
        }
        if let reply { self.recycleFrameBuffer(reply) }
        self.handlerFinished(id, isCall: isCall, released: held)
    }

    /// Shows a served call (or message) to the attached monitors.
    private func tapped(
        _ call: IncomingCall, isCall: Bool, reply: ByteBuffer?, failure: (any Error)?, arrived: (Date, ContinuousClock.Instant),
        into tap: TrafficTap
    ) {
        let elapsed = ContinuousClock.now - arrived.1
        let replyPayload = reply.flatMap { frame -> ByteBuffer? in
            guard failure == nil else { return nil }
            let length = FrameHeader.payloadLength(ofFrameIn: frame)
            return frame.getSlice(at: frame.writerIndex - length, length: length)
        }
        let error = failure.map { error -> String in
            guard let error = error as? IntercomError else { return "\(type(of: error)): \(error)" }
            return "\(error.code): \(error.message)"
        }
        let record = TrafficRecord(
            kind: isCall ? .call : .message, time: arrived.0, service: self.configuration.name, caller: self.remote.name,
            callerPID: self.remote.pid, method: call.method, codec: call.codec.name,
            requestBytes: call.payload.readableBytes, replyBytes: replyPayload?.readableBytes,
            microseconds: Int64(elapsed / .microseconds(1)),
            error: error)
        tap.record(record, request: call.payload, reply: replyPayload)
    }

    /// Shows a one-way message bound for the inbox (no handler) to the attached monitors.
    func tappedInboxMessage(_ frame: Frame, into tap: TrafficTap) {
        guard !self.isMonitorConnection.load(ordering: .relaxed) else { return }
        let codec = frame.flags.contains(.jsonPayload) ? "json" : self.codec.name
        let record = TrafficRecord(
            kind: .message, time: Date(), service: self.configuration.name, caller: self.remote.name,
            callerPID: self.remote.pid, method: frame.method ?? "", codec: codec,
            requestBytes: frame.payload.readableBytes, replyBytes: nil, microseconds: nil, error: nil)
        tap.record(record, request: frame.payload, reply: nil)
    }

    /// The `count` methods whose names share the longest start with `method`
    /// (a typo's intended method first), alphabetical among equals.
    static func closestMethods(to method: String, in methods: [String], count: Int) -> [String] {
        func shared(_ name: String) -> Int { zip(name.utf8, method.utf8).prefix { $0 == $1 }.count }
        return methods.map { ($0, shared($0)) }
            .sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
            .prefix(count).map(\.0)
    }

    /// A reply frame, and the descriptors its value holds (sent beside it).
    func encodeReply(_ value: (any Encodable & Sendable)?, id: UInt64, method: String, codec: PayloadCodec)
        throws -> (frame: ByteBuffer, descriptors: [Int32])
    {
        guard let value else { return (FrameHeader.empty(kind: .reply, id: id), []) }
        return try self.encodeFrameCarryingDescriptors(
            kind: .reply, id: id, method: nil, timeout: nil, value, context: .init(method: method, callID: id, peer: self.remote.name),
            codec: codec, flags: self.answerFlags(for: codec))
    }

    /// A call that came in another codec than the connection's (a JSON call,
    /// see `callJSON`) is answered in it, reply or error, and the frame says so.
    func answerFlags(for codec: PayloadCodec) -> FrameFlags {
        codec == self.codec ? [] : .jsonPayload
    }

    /// A handler stopped by its deadline answers `timeout`, not `cancelled`: the
    /// caller's own timer and this reply race, and the caller must see one answer.
    static func deadlineError(_ error: any Error, _ context: CallContext, now: ContinuousClock.Instant) -> IntercomError? {
        let cancelled = error is CancellationError || (error as? IntercomError)?.code == .cancelled
        guard cancelled, let deadline = context.deadline, deadline <= now else { return nil }
        let budget = context.timeout.map { " within \($0)" } ?? ""
        return IntercomError(
            .timeout, "no reply from the handler of '\(context.method)'\(budget): it ran past the caller's deadline")
    }

    /// An error frame for call `id`. A thrown `Encodable` error travels in the
    /// details in the call's codec: JSON (and the frame flagged so) for a call
    /// that came as JSON, as its reply would.
    func encodeError(_ error: any Error, id: UInt64, method: String, codec: PayloadCodec) -> ByteBuffer {
        var body: ErrorBody
        var flags = self.answerFlags(for: codec)
        switch error {
        case let error as IntercomError:
            body = ErrorBody(code: error.code.name, typeName: error.remoteType ?? "", message: error.message)
        case is CancellationError:
            body = ErrorBody(code: IntercomError.Code.cancelled.name, message: "the handler of '\(method)' was cancelled")
        default:
            body = ErrorBody(
                code: IntercomError.Code.remote.name, typeName: String(reflecting: type(of: error)),
                message: "\(error)")
            if let encodable = error as? any Encodable {
                var details = ByteBuffer()
                if (try? codec.encode(encodable, into: &details)) != nil {
                    body.details = details
                    flags.insert(.typedError)
                }
            }
        }
        return body.frame(id: id, flags: flags)
    }

    func handlerFinished(_ id: UInt64, isCall: Bool, released: Int) {
        let finish = self.withState { $0.handlerFinished(id, isCall: isCall, released: released) }
        if finish.releaseMemory { ReleasedMemory.handBack() }
        if let next = finish.next { self.startHandler(next, armTimerAt: finish.armTimerAt) }
        if finish.resumeReading { self.transport.setReadingPaused(false, reason: .callQueueFull) }
        if !finish.afterReply.isEmpty {
            Task { for action in finish.afterReply { await action() } }
        }
    }

    /// Registers ``CallContext/afterReply(_:)`` work for call `id` (at once for a
    /// one-way message, which has no reply, or a call no longer running).
    func afterReply(to id: UInt64, _ action: @escaping @Sendable () async -> Void) {
        if !self.withState({ $0.addAfterReply(action, to: id) }) { Task { await action() } }
    }
}
