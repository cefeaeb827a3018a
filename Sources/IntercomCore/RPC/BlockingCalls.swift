@_spi(IntercomInternals) public import IntercomTransport
internal import Dispatch
internal import Synchronization

/// A call started now whose reply is collected later (epyrpc's and
/// IPC::Manager's asynchronous requests): await it, poll it, wait for it with a
/// timeout from code that is not `async`, or have a callback run when it completes.
///
/// ```swift
/// let pending = peer.startCall("camera.snapshot", Snapshot(), returning: Image.self)
/// pending.onCompletion { result in … }
/// … other work …
/// if let result = pending.poll() { … }              // nil while it runs
/// let image = try pending.waitBlocking(timeout: .seconds(2))
/// ```
public final class PendingReply<Response: Sendable>: Sendable {
    private struct State {
        var result: Result<Response, any Error>?
        var callbacks: [@Sendable (Result<Response, any Error>) -> Void] = []
        var awaiting: [CheckedContinuation<Result<Response, any Error>, Never>] = []
    }

    private let state = Locked(State())
    private let done = DispatchSemaphore(value: 0)
    private let task = Locked<Task<Void, Never>?>(nil)

    init(_ operation: @escaping @Sendable () async throws -> Response) {
        let task = Task { [self] in
            let result: Result<Response, any Error>
            do {
                result = .success(try await operation())
            } catch {
                result = .failure(error)
            }
            self.complete(result)
        }
        self.task.withLock { $0 = task }
    }

    private func complete(_ result: Result<Response, any Error>) {
        let (callbacks, awaiting) = self.state.withLock { state in
            state.result = result
            defer {
                state.callbacks.removeAll()
                state.awaiting.removeAll()
            }
            return (state.callbacks, state.awaiting)
        }
        // Every blocked `wait` gets its own signal; later ones see the stored result.
        self.done.signal()
        for continuation in awaiting { continuation.resume(returning: result) }
        for callback in callbacks { callback(result) }
    }

    /// The result if the call has completed, nil while it is still running.
    public func poll() -> Result<Response, any Error>? {
        self.state.withLock { $0.result }
    }

    /// Whether the call has completed.
    public var isCompleted: Bool { self.poll() != nil }

    /// The reply, once it comes.
    ///
    /// - Throws: what the call throws.
    public var value: Response {
        get async throws {
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Response, any Error>, Never>) in
                let now = self.state.withLock { state -> Result<Response, any Error>? in
                    if let result = state.result { return result }
                    state.awaiting.append(continuation)
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
            return try result.get()
        }
    }

    /// Blocks this thread until the reply comes or `timeout` passes. For code that
    /// is not `async`; never call it on the connection's own thread.
    ///
    /// - Throws: ``IntercomError/Code/timeout`` if no reply came in time (the call
    ///   itself goes on until its own deadline), or what the call throws.
    @available(*, noasync, message: "use `try await value` in async code")
    public func waitBlocking(timeout: Duration) throws -> Response {
        if let result = self.poll() { return try result.get() }
        if self.done.wait(timeout: .after(timeout)) == .success {
            self.done.signal()  // pass it on to any other blocked waiter
        }
        guard let result = self.poll() else {
            throw IntercomError(.timeout, "no reply within \(timeout)")
        }
        return try result.get()
    }

    /// Renamed ``waitBlocking(timeout:)``: every call that blocks a thread ends in `Blocking`.
    @available(*, deprecated, renamed: "waitBlocking(timeout:)")
    @available(*, noasync)
    public func wait(timeout: Duration) throws -> Response {
        try self.waitBlocking(timeout: timeout)
    }

    /// Runs `callback` when the call completes (at once if it already has), on
    /// an arbitrary thread.
    public func onCompletion(_ callback: @escaping @Sendable (Result<Response, any Error>) -> Void) {
        let now = self.state.withLock { state -> Result<Response, any Error>? in
            if let result = state.result { return result }
            state.callbacks.append(callback)
            return nil
        }
        if let now { callback(now) }
    }

    /// Cancels the call (the handler on the other side is told to stop).
    public func cancel() {
        self.task.withLock { $0?.cancel() }
    }
}

extension Peer {
    /// Starts a call and returns at once with a handle to collect its reply later.
    public func startCall<Request: Encodable & Sendable, Response: Decodable & Sendable>(
        _ method: String, _ request: Request, returning: Response.Type = Response.self, timeout: Duration? = nil
    ) -> PendingReply<Response> {
        PendingReply { try await self.call(method, request, returning: Response.self, timeout: timeout) }
    }

    /// Calls `method` and blocks this thread until the reply comes, for code that
    /// is not `async` (epyrpc's and IPC::Manager's synchronous requests).
    ///
    /// - Throws: as ``call(_:_:returning:timeout:)``; ``IntercomError/Code/busy``
    ///   if called on the connection's own thread, where blocking would deadlock.
    @available(*, noasync, message: "use `try await call(…)` in async code")
    public func callBlocking<Request: Encodable & Sendable, Response: Decodable & Sendable>(
        _ method: String, _ request: Request, returning: Response.Type = Response.self, timeout: Duration? = nil
    ) throws -> Response {
        guard !self.transport.isOnTransportThread else {
            throw IntercomError(
                .busy, "callBlocking on the thread serving this connection would deadlock; use `await call`",
                context: .init(method: method, peer: self.remote.name))
        }
        let timeout = timeout ?? self.configuration.defaultCallTimeout
        // The call's own deadline fails it first; the margin only covers scheduling.
        return try self.startCall(method, request, returning: Response.self, timeout: timeout)
            .waitBlocking(timeout: timeout + .seconds(1))
    }

    /// Blocks until no call of this side is pending, for code that is not `async`.
    ///
    /// - Throws: ``IntercomError/Code/timeout`` if calls are still pending after `timeout`.
    @available(*, noasync, message: "use `try await waitForOutstandingCalls(timeout:)` in async code")
    public func waitForOutstandingCallsBlocking(timeout: Duration) throws {
        _ = try PendingReply { try await self.waitForOutstandingCalls(timeout: timeout) }.waitBlocking(timeout: timeout + .seconds(1))
    }

    /// The next unsolicited message if one is queued now, without waiting.
    ///
    /// - Throws: ``IntercomError`` `peerLost`/`closed` once the connection ended and
    ///   every message that arrived before has been taken.
    public func pollMessage() throws(IntercomError) -> InboundMessage? {
        try self.inbox.tryNext()
    }

    /// Blocks up to `timeout` for the next unsolicited message; nil if none came.
    /// For code that is not `async`.
    ///
    /// - Throws: ``IntercomError`` `peerLost`/`closed` once the connection ended
    ///   and every message that arrived before has been taken.
    @available(*, noasync, message: "use `try await receiveMessage(timeout:)` in async code")
    public func receiveMessageBlocking(timeout: Duration) throws -> InboundMessage? {
        let pending = PendingReply<InboundMessage?> {
            do {
                return try await self.receiveMessage(timeout: timeout)
            } catch let error as IntercomError where error.code == .timeout {
                return nil
            }
        }
        return try pending.waitBlocking(timeout: timeout + .seconds(1))
    }

    /// Renamed ``receiveMessageBlocking(timeout:)``: every call that blocks a thread
    /// ends in `Blocking`.
    @available(*, deprecated, renamed: "receiveMessageBlocking(timeout:)")
    @available(*, noasync)
    public func pollMessage(timeout: Duration) throws -> InboundMessage? {
        try self.receiveMessageBlocking(timeout: timeout)
    }

    /// Blocks up to `timeout` until an unsolicited message waits in the inbox,
    /// without taking it (ductworks' `poll(timeout)`). For code that is not `async`.
    ///
    /// - Returns: true once a message waits; false if none came within `timeout`.
    /// - Throws: as ``waitForMessage(timeout:)``.
    @available(*, noasync, message: "use `try await waitForMessage(timeout:)` in async code")
    public func waitForMessageBlocking(timeout: Duration) throws -> Bool {
        let pending = PendingReply<Bool> { try await self.waitForMessage(timeout: timeout) }
        return try pending.waitBlocking(timeout: timeout + .seconds(1))
    }
}
