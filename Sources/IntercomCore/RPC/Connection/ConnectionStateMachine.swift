package import IntercomTransport
/// One connection's state as a value: events in, actions out.
///
/// The model is grpc-swift-nio-transport's state machines. The peer keeps this
/// value under one lock; every event is a mutating method that changes the state
/// and returns what must happen next — resume these continuations, cancel these
/// tasks, arm a timer at this instant, pause reading — which the peer carries out
/// after releasing the lock. So no timer is scheduled, no task started, no frame
/// written and no continuation resumed while the lock is held, and there is no
/// lock order to remember. Nothing here does I/O, so the tests drive it without
/// any (with real tasks and timers that never run).
///
/// It holds concrete types (``PendingCall``, tasks, timers, closures) rather than
/// being generic over them: a generic version, easier to test with plain values,
/// resolved its entries' layouts through metadata at run time and cost 13–20 %
/// on calls in flight (BENCHMARKS.md).
///
/// It is also the one place that knows whether the connection has ended and
/// why (``phase``): calls, handlers, close waiters and the peer's receivers all
/// take the reason from here.
package struct ConnectionStateMachine {
    /// Woken when the connection has ended.
    package typealias CloseWaiter = @Sendable () -> Void

    /// Where the connection is in its life.
    package enum Phase {
        /// Calls go out, calls come in.
        case open
        /// No new calls: this side closed, or the other side broke the protocol.
        /// The transport is closing; calls already running on this side finish.
        case closing(IntercomError)
        /// The transport closed. Nothing more happens.
        case closed(IntercomError)
    }

    package private(set) var phase: Phase = .open
    package private(set) var outbound = OutboundCalls()
    package private(set) var inbound: InboundCalls
    private var goodbyeReceived = false
    /// Set when the other side said it suspends: calls are refused with this.
    private var suspension: IntercomError?
    private var closeWaiters: [CloseWaiter] = []
    /// This side's subscriptions to the other side's events: topic → queues
    /// (ConnectionStateMachine+Subscriptions.swift).
    var subscriptions: [String: [ObjectIdentifier: EventQueue]] = [:]

    package init(maxConcurrentHandlers: Int, maxQueuedCalls: Int, requestByteBudget: Int) {
        self.inbound = InboundCalls(
            maxConcurrent: maxConcurrentHandlers, maxQueued: maxQueuedCalls, byteBudget: requestByteBudget)
    }

    /// Why the connection is ending or ended; nil while it is open.
    package var endReason: IntercomError? {
        switch self.phase {
        case .open: nil
        case .closing(let reason), .closed(let reason): reason
        }
    }

    package var isClosed: Bool {
        if case .closed = self.phase { return true }
        return false
    }

    // MARK: This side's calls

    /// What registering a call leaves to do.
    package enum CallRegistration {
        /// Send the call's frame (and arm the call timer first, if asked).
        case send(armTimerAt: Deadline?)
        /// Do not send it: fail the call with this error.
        case refuse(IntercomError)
        /// Its task was cancelled before it was registered.
        case cancelled
    }

    /// This side makes call `id` (refused if its task was already cancelled).
    package mutating func registerCall(_ id: UInt64, _ call: PendingCall) -> CallRegistration {
        if let reason = self.endReason ?? self.suspension { return .refuse(reason) }
        if call.isCancelled { return .cancelled }
        return .send(armTimerAt: self.outbound.register(id, call))
    }

    /// The call timer asked for is armed. Returns it if the connection ended
    /// meanwhile: cancel it.
    package mutating func callTimerArmed(_ timer: any ScheduledWork, at deadline: Deadline) -> (any ScheduledWork)? {
        guard case .open = self.phase else { return timer }
        self.outbound.timerArmed(timer, at: deadline)
        return nil
    }

    /// Call `id` was answered, or its caller cancelled it.
    package mutating func callEnded(_ id: UInt64) -> OutboundCalls.Removal {
        self.outbound.remove(id)
    }

    /// The call timer fired.
    package mutating func callTimerFired(at now: Deadline) -> OutboundCalls.Expiry {
        var expiry = self.outbound.timerFired(at: now)
        if case .open = self.phase {} else { expiry.armTimerAt = nil }
        return expiry
    }

    /// A task waits until no call is pending; nil if it need not wait.
    package mutating func addDrainWaiter(_ waiter: @escaping OutboundCalls.DrainWaiter) -> UInt64? {
        self.outbound.addDrainWaiter(waiter)
    }

    /// A drain waiter's time ran out; nil if it was already woken.
    package mutating func removeDrainWaiter(_ key: UInt64) -> OutboundCalls.DrainWaiter? {
        self.outbound.removeDrainWaiter(key)
    }

    // MARK: The other side's calls

    /// A call or routed message arrived; nil once the connection closed (dropped).
    package mutating func requestArrived(_ request: InboundCalls.Request) -> InboundCalls.Arrival? {
        guard !self.isClosed else { return nil }
        return self.inbound.arrive(request)
    }

    /// The task for call `id` exists. Returns whether to cancel it at once.
    package mutating func handlerTaskCreated(_ task: Task<Void, Never>, for id: UInt64) -> Bool {
        self.inbound.attach(task, to: id)
    }

    /// The other side cancelled its call `id`.
    package mutating func cancelRequested(_ id: UInt64) -> InboundCalls.Cancellation {
        self.inbound.cancel(id)
    }

    /// A handler's reply waits for room in the outbound buffer.
    package mutating func replyWaiting(_ bytes: Int) {
        self.inbound.replyWaiting(bytes)
    }

    /// The handler of `id` finished.
    package mutating func handlerFinished(_ id: UInt64, isCall: Bool, released: Int) -> InboundCalls.Finish {
        self.inbound.finished(id, isCall: isCall, released: released, ended: self.isClosed)
    }

    /// Registers after-reply work for call `id`; false: run it now.
    package mutating func addAfterReply(_ action: @escaping InboundCalls.AfterReply, to id: UInt64) -> Bool {
        self.inbound.addAfterReply(action, to: id)
    }

    /// The handler timer asked for is armed. Returns it if the connection closed meanwhile: cancel it.
    package mutating func handlerTimerArmed(_ timer: any ScheduledWork, at deadline: Deadline) -> (any ScheduledWork)? {
        guard !self.isClosed else { return timer }
        self.inbound.timerArmed(timer, at: deadline)
        return nil
    }

    /// The handler timer fired.
    package mutating func handlerTimerFired(at now: Deadline) -> InboundCalls.Expiry {
        var expiry = self.inbound.timerFired(at: now)
        if self.isClosed { expiry.armTimerAt = nil }
        return expiry
    }

    // MARK: The connection's life

    /// The other side said goodbye: its end of the connection will be a clean one.
    package mutating func goodbyeArrived() {
        self.goodbyeReceived = true
    }

    /// The other side suspends (restarts on purpose): refuse calls from now on
    /// with `reason`. False if it had already said so, or the connection is ending.
    package mutating func suspensionArrived(_ reason: IntercomError) -> Bool {
        guard case .open = self.phase, self.suspension == nil else { return false }
        self.suspension = reason
        return true
    }

    /// Whether the other side said it suspends.
    package var otherSideSuspends: Bool { self.suspension != nil }

    /// This side closes (`reason` is `closed`) or found the other side broke the
    /// protocol (`reason` says how). Returns the calls to fail, or nil if the
    /// connection was already ending (nothing to do but wait).
    package mutating func beginClosing(_ reason: IntercomError) -> OutboundCalls.Ending? {
        guard case .open = self.phase else { return nil }
        self.phase = .closing(reason)
        return self.outbound.end()
    }

    /// What the transport's end leaves to do.
    package struct Closure {
        /// Why the connection ended: for receivers and subscriptions.
        package var reason: IntercomError
        package var calls: OutboundCalls.Ending
        package var handlers: InboundCalls.Ending
        package var closeWaiters: [CloseWaiter]
        /// Every event subscription: end each with the reason.
        var subscriptions: [EventQueue]
    }

    /// The transport closed. The reason is the one closing began with, or `lost`
    /// (given whether the other side said goodbye) if it did not. Nil if it was
    /// already closed.
    package mutating func transportClosed(lost: (_ saidGoodbye: Bool) -> IntercomError) -> Closure? {
        let reason: IntercomError
        switch self.phase {
        case .open: reason = lost(self.goodbyeReceived)
        case .closing(let why): reason = why
        case .closed: return nil
        }
        self.phase = .closed(reason)
        defer { self.closeWaiters.removeAll() }
        return Closure(
            reason: reason, calls: self.outbound.end(), handlers: self.inbound.end(), closeWaiters: self.closeWaiters,
            subscriptions: self.takeSubscriptions())
    }

    /// A task waits for the end; false if the connection already closed (it need not wait).
    package mutating func addCloseWaiter(_ waiter: @escaping CloseWaiter) -> Bool {
        guard !self.isClosed else { return false }
        self.closeWaiters.append(waiter)
        return true
    }
}
