internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import Synchronization
internal import Tracing

// Calls this side makes: encoding the request, the outbound call table and its deadline timer.
extension Peer {

    /// Calls `method` on the other side with `request` and returns its reply.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait for the reply (default
    ///     ``Configuration/defaultCallTimeout``). The remaining time travels in the
    ///     frame; the handler's task is cancelled when it runs out.
    /// - Throws: ``IntercomError`` (`timeout`, `peerLost`, `unknownMethod`, `remote`,
    ///   `invalidPayload`, `frameTooLarge`, `cancelled`, `closed`, …), or the handler's
    ///   own error if its type is in ``Configuration/remoteErrors``. Cancelling the
    ///   calling task sends a cancel frame and cancels the handler's task.
    nonisolated(nonsending) public func call<Request: Encodable, Response: Decodable>(
        _ method: String,
        _ request: Request,
        returning: Response.Type = Response.self,
        timeout: Duration? = nil
    ) async throws -> Response {
        let reply = try await self.exchange(method, request, timeout: timeout ?? self.configuration.defaultCallTimeout)
        return try self.codec.decodePayload(
            Response.self, from: reply.payload, what: "reply to '\(method)'",
            context: .init(method: method, callID: reply.id, peer: self.remote.name), descriptors: reply.descriptors)
    }

    /// Calls `method` and waits for it to complete, ignoring any reply value.
    ///
    /// - Throws: as ``call(_:_:returning:timeout:)``.
    nonisolated(nonsending) public func call<Request: Encodable>(_ method: String, _ request: Request, timeout: Duration? = nil) async throws {
        _ = try await self.exchange(method, request, timeout: timeout ?? self.configuration.defaultCallTimeout)
    }

    /// Sends a `ping` frame and returns the round-trip time.
    ///
    /// - Throws: ``IntercomError`` `timeout`, `peerLost` or `closed`.
    public func ping(timeout: Duration = .seconds(5)) async throws -> Duration {
        let start = self.transport.now
        _ = try await self.exchange(nil, Optional<Int>.none, timeout: timeout, kind: .ping)
        return self.transport.now - start
    }

    /// Calls `method` with a JSON argument and returns the JSON reply, whatever
    /// codec the connection uses: the handler decodes the JSON as its typed
    /// request and answers in JSON. For tools (`intercom call`) and scripts.
    ///
    /// - Returns: the reply's JSON text (`null` for a handler without a value).
    /// - Throws: as ``call(_:_:returning:timeout:)``.
    public func callJSON(_ method: String, json: String, timeout: Duration? = nil) async throws -> String {
        let reply = try await self.exchange(
            method, Optional<Int>.none, timeout: timeout ?? self.configuration.defaultCallTimeout, jsonArgument: json)
        return reply.payload.readableBytes == 0 ? "null" : String(buffer: reply.payload)
    }

    /// Sends the frame of one call and waits for the frame that answers it.
    nonisolated(nonsending) func exchange<Request: Encodable>(
        _ method: String?, _ request: Request, timeout: Duration, kind: FrameKind = .call, jsonArgument: String? = nil,
        id presetID: UInt64? = nil, flags: FrameFlags = []
    ) async throws -> Frame {
        // The error context is made only for an error (its strings are copied).
        if let method, method.utf8.count > 255 {
            throw IntercomError(.invalidName, "method name is longer than 255 bytes", context: self.errorContext(method: method))
        }
        guard timeout > .zero else {
            throw IntercomError(
                .timeout, "call timed out before it was sent (timeout \(timeout))", context: self.errorContext(method: method))
        }
        let pending = PendingCall(method: method, timeout: timeout, deadline: Deadline(self.transport.now).advanced(by: timeout))
        let id = presetID ?? self.nextCallID.add(1, ordering: .relaxed).oldValue
        let frame: ByteBuffer
        var descriptors: [Int32] = []
        var outgoing: OutgoingSpan?
        if let jsonArgument {
            var buffer = ByteBuffer()
            let mark = FrameHeader.begin(
                into: &buffer, kind: .call, flags: flags.union(.jsonPayload), id: id, method: method, timeout: timeout)
            buffer.writeString(jsonArgument)
            FrameHeader.finish(mark, in: &buffer)
            frame = buffer
        } else if kind == .call {
            outgoing = method.flatMap { self.startOutgoingSpan($0, kind: .client) }
            do {
                (frame, descriptors) = try self.encodeFrameCarryingDescriptors(
                    kind: .call, id: id, method: method, timeout: timeout, request, context: self.errorContext(method: method), flags: flags,
                    trace: outgoing?.carrier)
            } catch {
                outgoing?.span.end(failing: error)
                throw error
            }
        } else {
            frame = FrameHeader.empty(kind: kind, id: id)
        }
        let metrics = kind == .call ? self.metrics : nil
        guard metrics != nil || outgoing != nil else {
            try await self.waitUntilWritable(context: self.errorContext(method: method))
            return try await self.send(frame, descriptors: descriptors, as: id, pending, method: method)
        }
        let start = ContinuousClock.now
        let sent = FrameHeader.payloadLength(ofFrameIn: frame)  // payload bytes, as the serving side counts them
        do {
            try await self.waitUntilWritable(context: self.errorContext(method: method))
            let reply = try await self.send(frame, descriptors: descriptors, as: id, pending, method: method)
            outgoing?.span.end(failing: nil)
            metrics?.record(.client, method: method ?? "", out: sent, in: reply.payload.readableBytes, duration: .now - start, error: nil)
            return reply
        } catch {
            outgoing?.span.end(failing: error)
            metrics?.record(.client, method: method ?? "", out: sent, in: 0, duration: .now - start, error: error)
            throw error
        }
    }

    /// Registers call `id` and sends its frame; returns the answer.
    nonisolated(nonsending) private func send(
        _ frame: ByteBuffer, descriptors: [Int32], as id: UInt64, _ pending: PendingCall, method: String?
    ) async throws -> Frame {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Frame, any Error>) in
                pending.continuation = continuation  // before the call is published (registered)
                switch self.withState({ $0.registerCall(id, pending) }) {
                case .refuse(let reason):
                    continuation.resume(throwing: reason.with(self.errorContext(method: method)))
                case .cancelled:
                    continuation.resume(throwing: IntercomError(.cancelled, "the calling task was cancelled", context: self.errorContext(method: method)))
                case .send(let armTimerAt):
                    if let armTimerAt { self.armCallTimer(at: armTimerAt) }
                    do throws(IntercomError) {
                        try self.transmit(frame, descriptors: descriptors)
                        if descriptors.isEmpty { self.recycleFrameBuffer(frame) }
                    } catch {
                        // Nothing was sent: the call ends here.
                        let removal = self.withState { $0.callEnded(id) }
                        for waiter in removal.drained { waiter(true) }
                        continuation.resume(throwing: error.with(self.errorContext(method: method)))
                    }
                }
            }
        } onCancel: {
            pending.cancel()
            self.cancelCall(id)
        }
    }

    /// What an error of a call or message names: made where an error is thrown,
    /// not per call (copying the peer's name each time showed in profiles).
    func errorContext(method: String?) -> IntercomError.Context {
        IntercomError.Context(method: method, peer: self.remote.name)
    }

    /// Waits for room in the outbound buffer. If the connection ended, throws why
    /// it ended (`peerLost` with the peer's name, or `closed`), not just that it did.
    nonisolated(nonsending) func waitUntilWritable(context: @autoclosure () -> IntercomError.Context) async throws(IntercomError) {
        do {
            try await self.transport.waitUntilWritable()
        } catch {
            if let ended = self.withState({ $0.endReason }) { throw ended.with(context()) }
            throw error.with(context())
        }
    }

    func encodeFrame<Value: Encodable>(
        kind: FrameKind, id: UInt64, method: String?, timeout: Duration?, _ value: Value,
        context: @autoclosure () -> IntercomError.Context, codec: PayloadCodec? = nil, flags: FrameFlags = [],
        trace: [String: String]? = nil
    ) throws(IntercomError) -> ByteBuffer {
        var buffer = self.takeFrameBuffer()
        try self.appendFrame(
            into: &buffer, kind: kind, id: id, method: method, timeout: timeout, value, context: context(), codec: codec,
            flags: flags, trace: trace)
        return buffer
    }

    /// An empty buffer for a frame: the one a sent frame left behind, or a new one.
    /// Reusing it is always safe — a buffer the transport still holds is copied on
    /// write by `clear()` — and saves an allocation per frame when the transport
    /// copied it out at once (shared memory); see ``recycleFrameBuffer(_:)``.
    func takeFrameBuffer() -> ByteBuffer {
        guard var buffer = self.spareFrameBuffer.withLock({ $0.take() }) else {
            var buffer = ByteBuffer()
            buffer.reserveCapacity(128)
            return buffer
        }
        buffer.clear()
        return buffer
    }

    /// Keeps a sent frame's buffer for the next frame, if it is small (a large
    /// one is not held on to) and none is kept yet.
    func recycleFrameBuffer(_ buffer: consuming ByteBuffer) {
        guard buffer.capacity <= 4096 else { return }
        self.spareFrameBuffer.withLock { spare in
            if spare == nil { spare = buffer }
        }
    }

    /// Encodes one frame at the end of `buffer` (several frames may share one buffer
    /// and go out in one write). On error `buffer` holds part of a frame: discard it.
    func appendFrame<Value: Encodable>(
        into buffer: inout ByteBuffer, kind: FrameKind, id: UInt64, method: String?, timeout: Duration?, _ value: Value,
        context: @autoclosure () -> IntercomError.Context, codec: PayloadCodec? = nil, flags: FrameFlags = [],
        trace: [String: String]? = nil
    ) throws(IntercomError) {
        // (`context` is made only for an error: copying its strings per frame showed
        // up at a fifth of a stream producer's time.)
        // Raw byte chunks (stream items, mostly) in one write to the buffer, where
        // nothing would be compressed: the header and the payload are known up front.
        if Value.self == [UInt8].self, method == nil, timeout == nil, trace == nil, (codec ?? self.codec).isBinary {
            let bytes = unsafeBitCast(value, to: [UInt8].self)
            if kind == .streamItem || bytes.count + 10 < self.compressionThreshold {
                let length = bytes.withUnsafeBytes {
                    FrameHeader.appendByteArrayFrame(into: &buffer, kind: kind, flags: flags, id: id, bytes: $0)
                }
                try self.checkPayloadLength(length, of: kind, context: context())
                return
            }
        }
        var mark = FrameHeader.begin(into: &buffer, kind: kind, flags: flags, id: id, method: method, timeout: timeout)
        if let trace { mark = FrameHeader.addTraceContext(trace, to: mark, in: &buffer) }
        do {
            try (codec ?? self.codec).encode(value, into: &buffer)
        } catch {
            throw IntercomError(.invalidPayload, "\(Value.self) does not encode: \(error)", context: context(), cause: error)
        }
        var length = FrameHeader.finish(mark, in: &buffer)
        // Stream items stay as they are: their flow control counts the bytes on the wire.
        if length >= self.compressionThreshold, kind != .streamItem,
            let compressed = self.configuration.compression.compress(buffer.getSlice(at: mark.payloadStart, length: length)!)
        {
            FrameHeader.replacePayload(mark, in: &buffer, with: compressed, adding: .compressed)
            length = compressed.readableBytes
        }
        try self.checkPayloadLength(length, of: kind, context: context())
    }

    /// Refuses a payload longer than the other side accepts in one frame.
    func checkPayloadLength(_ length: Int, of kind: FrameKind, context: @autoclosure () -> IntercomError.Context) throws(IntercomError) {
        guard length <= self.remoteMaxFrameSize else {
            throw IntercomError(
                .frameTooLarge,
                "\(kind) payload of \(length) bytes exceeds the \(self.remoteMaxFrameSize)-byte maximum frame size of peer '\(self.remote.name)'; send it in parts",
                context: context())
        }
    }

    /// Arms the call timer at `deadline` (outside the state lock; the state machine records it).
    func armCallTimer(at deadline: Deadline) {
        let timer = self.transport.schedule(after: deadline - Deadline(self.transport.now)) { [weak self] in self?.expireOverdueCalls() }
        self.withState { $0.callTimerArmed(timer, at: deadline) }?.cancel()
    }

    /// The call timer fired: fail every call past its deadline, tell their handlers
    /// to stop, and arm the timer for the next deadline.
    func expireOverdueCalls() {
        let now = Deadline(self.transport.now)
        let expiry = self.withState { $0.callTimerFired(at: now) }
        if let next = expiry.armTimerAt { self.armCallTimer(at: next) }
        for waiter in expiry.drained { waiter(true) }
        for (id, call) in expiry.overdue {
            self.sendCancel(id)
            call.continuation?.resume(
                throwing: IntercomError(
                    .timeout, "no reply from '\(self.remote.name)' within \(call.timeout)",
                    context: .init(method: call.method, callID: id, peer: self.remote.name)))
        }
    }

    /// The calling task of call `id` was cancelled: fail the call and tell the
    /// other side to stop its handler (if the call is still pending).
    func cancelCall(_ id: UInt64) {
        let removal = self.withState { $0.callEnded(id) }
        for waiter in removal.drained { waiter(true) }
        guard let call = removal.call else { return }
        self.sendCancel(id)
        call.continuation?.resume(
            throwing: IntercomError(
                .cancelled, "the calling task was cancelled; the handler was told to stop",
                context: .init(method: call.method, callID: id, peer: self.remote.name)))
    }

    func sendCancel(_ id: UInt64) {
        self.transmit(FrameHeader.empty(kind: .cancel, id: id))
    }
}
