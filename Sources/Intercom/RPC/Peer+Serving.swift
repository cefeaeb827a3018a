internal import IntercomWire
internal import Logging
internal import NIOCore
internal import DequeModule

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
        var reusedID = false
        let pause = self.handlers.withLock { table -> Bool in
            if table.ended { return false }
            // Id 0 is "the whole connection" in error frames, and a reply is matched
            // by id alone: neither may name a call (docs/PROTOCOL.md, "Calls").
            if frame.kind == .call, frame.id == 0 || table.running[frame.id] != nil {
                reusedID = true
                return false
            }
            table.bytes += Self.heldBytes(frame)
            table.peakBytes = max(table.peakBytes, table.bytes)
            if table.active < self.configuration.maxConcurrentHandlers {
                table.active += 1
                self.startHandler(frame, table: &table)
            } else {
                table.queued.append(frame)
            }
            guard table.isOverLimit(self.configuration) else { return false }
            table.paused = true
            return true
        }
        if reusedID {
            self.violated(
                ProtocolError(
                    .malformedHeader,
                    frame.id == 0
                        ? "a call with id 0 (reserved for errors about the whole connection)"
                        : "call id \(frame.id) is already used by a call in flight"))
            return
        }
        if pause { self.transport.setReadingPaused(true, reason: .callQueueFull) }
    }

    /// Starts the task for one call. Runs under the handler-table lock, so the task
    /// is in `running` before it can finish and remove itself.
    func startHandler(_ frame: Frame, table: inout HandlerTable) {
        let arrival = self.transport.now
        let deadline = frame.timeout.map { arrival.advanced(by: $0) }
        let method = frame.method ?? ""
        let context = CallContext(
            method: method, callID: frame.id, deadline: deadline, timeout: frame.timeout, peerName: self.remoteName,
            peerPID: self.remotePID, peer: self)
        let codec = frame.flags.contains(.jsonPayload) ? PayloadCodec.json(limits: self.codec.limits) : self.codec
        let call = IncomingCall(context: context, payload: frame.payload, codec: codec)
        let isCall = frame.kind == .call
        let executor: (any TaskExecutor)? =
            self.configuration.handlerExecution == .connectionThread ? self.transport.executor : nil
        let held = Self.heldBytes(frame)
        let task = Task(executorPreference: executor) {
            await self.run(call, isCall: isCall, held: held)
        }
        guard isCall else { return }
        table.running[frame.id] = RunningHandler(task: task, deadline: deadline)
        // The deadline travels in the frame: the handler is cancelled when it passes,
        // even if the caller's cancel frame never comes.
        if let deadline, table.timer.needsTimer(for: deadline) {
            table.timer.record(self.armHandlerTimer(at: deadline), at: deadline)
        }
    }

    func armHandlerTimer(at deadline: ContinuousClock.Instant) -> any ScheduledWork {
        self.transport.schedule(after: deadline - self.transport.now) { [weak self] in self?.cancelOverdueHandlers() }
    }

    /// The handler timer fired: cancel every handler past its caller's deadline and
    /// arm the timer for the next one. (Handlers remove themselves when they end.)
    func cancelOverdueHandlers() {
        let now = self.transport.now
        let overdue = self.handlers.withLock { table -> [Task<Void, Never>] in
            table.timer.fired(at: now)
            var overdue: [Task<Void, Never>] = []
            var next: ContinuousClock.Instant?
            for handler in table.running.values {
                guard let deadline = handler.deadline else { continue }
                if deadline <= now {
                    if !handler.task.isCancelled { overdue.append(handler.task) }
                } else if next.map({ deadline < $0 }) ?? true {
                    next = deadline
                }
            }
            if let next, table.timer.needsTimer(for: next) { table.timer.record(self.armHandlerTimer(at: next), at: next) }
            return overdue
        }
        for task in overdue { task.cancel() }
    }

    func run(_ call: IncomingCall, isCall: Bool, held: Int) async {
        let id = call.context.callID
        var reply: ByteBuffer?
        do {
            guard let handler = self.router?.handler(for: call.method) else {
                let registered = self.router?.methods ?? []
                throw IntercomError(
                    .unknownMethod,
                    "peer '\(self.configuration.name)' has no handler for '\(call.method)'"
                        + (registered.isEmpty ? " (it registers no methods)" : "; it handles: \(registered.prefix(20).joined(separator: ", "))"),
                    context: .init(method: call.method, callID: id))
            }
            let value = try await handler(call)
            if isCall {
                reply = try self.encodeReply(value, id: id, method: call.method, codec: call.codec)
            }
        } catch {
            if isCall {
                reply = self.encodeError(
                    Self.deadlineError(error, call.context, now: self.transport.now) ?? error, id: id, method: call.method, codec: call.codec)
            } else {
                self.configuration.logger.warning(
                    "handler of one-way message failed", metadata: ["method": "\(call.method)", "error": "\(error)"])
            }
        }
        var held = held
        if let reply, !self.transport.sendIfWritable(reply) {
            // Over the watermark: wait for the caller to read (or the connection to
            // end). The waiting reply counts against the byte budget meanwhile.
            let replyBytes = reply.readableBytes
            held += replyBytes
            self.handlers.withLock { $0.bytes += replyBytes }
            try? await self.transport.waitUntilWritable()
            self.transport.send(reply)
        }
        self.handlerFinished(id, isCall: isCall, released: held)
    }

    func encodeReply(_ value: (any Encodable & Sendable)?, id: UInt64, method: String, codec: PayloadCodec)
        throws -> ByteBuffer
    {
        let context = IntercomError.Context(method: method, callID: id, peer: self.remoteName)
        guard let value else { return FrameHeader.empty(kind: .reply, id: id) }
        return try self.encodeFrame(
            kind: .reply, id: id, method: nil, timeout: nil, value, context: context, codec: codec,
            flags: self.answerFlags(for: codec))
    }

    /// A call that came in another codec than the connection's (a JSON call,
    /// see `callJSON`) is answered in it, reply or error, and the frame says so.
    func answerFlags(for codec: PayloadCodec) -> FrameFlags {
        codec.id == self.codec.id ? [] : .jsonPayload
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
        let (resume, afterReply) = self.handlers.withLock { table -> (Bool, [@Sendable () async -> Void]) in
            let afterReply = isCall ? table.running.removeValue(forKey: id)?.afterReply ?? [] : []
            table.active -= 1
            table.bytes -= released
            guard !table.ended else {
                if table.takeMemoryToRelease() { ReleasedMemory.handBack() }
                return (false, afterReply)
            }
            if let next = table.queued.popFirst() {
                table.active += 1
                self.startHandler(next, table: &table)
            }
            guard table.paused, !table.isOverLimit(self.configuration) else { return (false, afterReply) }
            table.paused = false
            return (true, afterReply)
        }
        if resume { self.transport.setReadingPaused(false, reason: .callQueueFull) }
        if !afterReply.isEmpty {
            Task { for action in afterReply { await action() } }
        }
    }

    /// Registers ``CallContext/afterReply(_:)`` work for call `id` (at once for a
    /// one-way message, which has no reply, or a call no longer running).
    func afterReply(to id: UInt64, _ action: @escaping @Sendable () async -> Void) {
        let registered = self.handlers.withLock { table -> Bool in
            guard id != 0, table.running[id] != nil else { return false }
            table.running[id]!.afterReply.append(action)
            return true
        }
        if !registered { Task { await action() } }
    }
}
