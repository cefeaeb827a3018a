import Intercom
import IntercomWire
import Testing

/// The connection's state machine on its own: no transport, no I/O, no clock
/// but instants the test makes up. Calls are named by their method, timers by
/// a name; tasks are real but never run anything. Each test reads what the
/// machine tells the peer to do.
@Suite struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    typealias Request = InboundCalls.Request

    /// A timer that never runs: the machine only stores and hands back timers.
    struct NamedTimer: ScheduledWork {
        let name: String
        func cancel() {}
    }

    /// An origin for made-up instants (read once; nothing waits on it).
    let origin = ContinuousClock.now

    func at(_ seconds: Int) -> Deadline { Deadline(self.origin + .seconds(seconds)) }

    func machine(concurrent: Int = 2, queued: Int = 3, budget: Int = 1 << 30) -> Machine {
        Machine(maxConcurrentHandlers: concurrent, maxQueuedCalls: queued, requestByteBudget: budget)
    }

    /// A call named by its method (its continuation stays unset: nothing is resumed here).
    func call(_ name: String, deadline seconds: Int) -> PendingCall {
        PendingCall(method: name, timeout: .seconds(seconds), deadline: self.at(seconds))
    }

    func request(_ id: UInt64, bytes: Int = 100, deadline: Int? = nil, isCall: Bool = true) -> Request {
        Request(
            id: id, isCall: isCall, frame: Frame(kind: isCall ? .call : .message, id: id), bytes: bytes,
            deadline: deadline.map(self.at))
    }

    func timer(_ name: String) -> NamedTimer { NamedTimer(name: name) }
    func names(_ timers: [any ScheduledWork]) -> [String] { timers.compactMap { ($0 as? NamedTimer)?.name } }
    func name(_ timer: (any ScheduledWork)?) -> String? { (timer as? NamedTimer)?.name }

    /// Real tasks that never run anything: the machine stores and hands them back.
    static let task1 = Task<Void, Never> {}
    static let task2 = Task<Void, Never> {}
    static let task3 = Task<Void, Never> {}

    static let lost = IntercomError(.peerLost, "went away")
    static let closed = IntercomError(.closed, "this side closed")

    // MARK: This side's calls

    @Test func oneTimerServesManyDeadlinesAndIsArmedOnlyForAnEarlierOne() {
        var machine = self.machine()
        guard case .send(let first) = machine.registerCall(1, self.call("a", deadline: 5)),
            case .send(let later) = machine.registerCall(2, self.call("b", deadline: 9)),
            case .send(let earlier) = machine.registerCall(3, self.call("c", deadline: 2))
        else {
            Issue.record("a call on an open connection was refused")
            return
        }
        #expect(first == self.at(5))
        #expect(later == nil)
        #expect(earlier == self.at(2))
        let timerToCancel = machine.callTimerArmed(self.timer("timer at 5"), at: self.at(5))
        #expect(timerToCancel == nil)
        let timerToCancelAgain = machine.callTimerArmed(self.timer("timer at 2"), at: self.at(2))
        #expect(timerToCancelAgain == nil)

        // At 2 s: call 3 is overdue; the timer armed at 5 covers the rest.
        let expiry = machine.callTimerFired(at: self.at(2))
        #expect(expiry.overdue.map(\.id) == [3])
        #expect(expiry.armTimerAt == nil)
        // At 5 s: call 1 is overdue; call 2 needs a timer at 9.
        let next = machine.callTimerFired(at: self.at(5))
        #expect(next.overdue.map(\.call.method) == ["a"])
        #expect(next.armTimerAt == self.at(9))
        #expect(machine.outbound.pending.keys.sorted() == [2])
    }

    @Test func anAnswerRemovesItsCallOnceAndALateOneFindsNothing() {
        var machine = self.machine()
        _ = machine.registerCall(7, self.call("caller", deadline: 5))
        let removal = machine.callEnded(7)
        #expect(removal.call?.method == "caller")
        let removalAgain = machine.callEnded(7)
        #expect(removalAgain.call == nil)  // the late reply
    }

    @Test func drainWaitersWakeWhenTheLastCallEndsWhicheverWayItEnds() {
        var machine = self.machine()
        let waiterKey = machine.addDrainWaiter { _ in }
        #expect(waiterKey == nil)
        _ = machine.registerCall(1, self.call("answered", deadline: 5))
        _ = machine.registerCall(2, self.call("times out", deadline: 1))
        let key = machine.addDrainWaiter { _ in }
        #expect(key != nil)
        let removal = machine.callEnded(1)
        #expect(removal.drained.isEmpty)
        let expiry = machine.callTimerFired(at: self.at(1))
        #expect(expiry.drained.count == 1)

        _ = machine.registerCall(3, self.call("pending", deadline: 5))
        let gaveUp = machine.addDrainWaiter { _ in }!
        let takenBack = machine.removeDrainWaiter(gaveUp)
        #expect(takenBack != nil)
        let removalAgain = machine.callEnded(3)
        #expect(removalAgain.drained.isEmpty)
    }

    @Test func aCallCancelledBeforeItIsRegisteredIsNeverSent() {
        var machine = self.machine()
        let call = self.call("a", deadline: 5)
        call.cancel()
        guard case .cancelled = machine.registerCall(1, call) else {
            Issue.record("a cancelled call was registered")
            return
        }
        #expect(machine.outbound.pending.isEmpty)
    }

    // MARK: The connection's life

    @Test func closingFailsPendingCallsOnceRefusesNewOnesAndKeepsItsReason() {
        var machine = self.machine()
        _ = machine.registerCall(1, self.call("a", deadline: 5))
        _ = machine.callTimerArmed(self.timer("timer"), at: self.at(5))
        let ending = machine.beginClosing(Self.closed)
        #expect(ending?.orphans.map(\.call.method) == ["a"])
        #expect(self.names(ending?.timers ?? []) == ["timer"])
        let closingAgain = machine.beginClosing(Self.closed)
        #expect(closingAgain == nil)

        guard case .refuse(let reason) = machine.registerCall(2, self.call("b", deadline: 5)) else {
            Issue.record("a call after close was registered")
            return
        }
        #expect(reason.code == .closed)
        // A timer armed after the end comes straight back to be cancelled.
        let timerToCancel = machine.callTimerArmed(self.timer("late timer"), at: self.at(5))
        #expect(self.name(timerToCancel) == "late timer")

        // The transport's end keeps the reason closing began with, whatever it saw.
        let closure = machine.transportClosed { _ in Self.lost }
        #expect(closure?.reason.code == .closed)
        #expect(machine.isClosed)
        #expect(machine.transportClosed { _ in Self.lost } == nil)
    }

    @Test func theTransportsEndTellsWhetherTheOtherSideSaidGoodbye() {
        var polite = self.machine()
        polite.goodbyeArrived()
        var saw: Bool?
        _ = polite.transportClosed { goodbye in
            saw = goodbye
            return Self.lost
        }
        #expect(saw == true)

        var abrupt = self.machine()
        let mustWait = abrupt.addCloseWaiter {}
        #expect(mustWait)
        let closure = abrupt.transportClosed { goodbye in
            saw = goodbye
            return Self.lost
        }
        #expect(saw == false)
        #expect(closure?.reason.code == .peerLost)
        #expect(closure?.closeWaiters.count == 1)
        let mustWaitAgain = abrupt.addCloseWaiter {}
        #expect(!mustWaitAgain)
        #expect(abrupt.endReason?.code == .peerLost)
    }

    // MARK: The other side's calls

    @Test func callsBeyondTheHandlerLimitQueueAndStartAsSlotsFree() {
        var machine = self.machine(concurrent: 1)
        guard case .start(let first, _, pauseReading: false)? = machine.requestArrived(self.request(1)),
            case .queued(pauseReading: false)? = machine.requestArrived(self.request(2))
        else {
            Issue.record("the first call should start and the second queue")
            return
        }
        #expect(first.id == 1)
        #expect(machine.inbound.active == 1)
        #expect(machine.inbound.queuedCount == 1)
        let cancelAtOnce = machine.handlerTaskCreated(Self.task1, for: 1)
        #expect(cancelAtOnce == false)
        let finish = machine.handlerFinished(1, isCall: true, released: 100)
        #expect(finish.next?.id == 2)
        #expect(machine.inbound.active == 1)
        #expect(machine.inbound.bytes == 100)
    }

    @Test func readingPausesAtTheQueueLimitOrTheByteBudgetAndResumesBelowIt() {
        var byCount = self.machine(concurrent: 1, queued: 2)
        _ = byCount.requestArrived(self.request(1))
        _ = byCount.requestArrived(self.request(2))
        guard case .queued(pauseReading: true)? = byCount.requestArrived(self.request(3)) else {
            Issue.record("a full call queue must pause reading")
            return
        }
        let finish = byCount.handlerFinished(1, isCall: true, released: 100)
        #expect(finish.resumeReading)

        var byBytes = self.machine(concurrent: 8, budget: 1_000)
        _ = byBytes.requestArrived(self.request(1, bytes: 600))
        guard case .start(_, _, pauseReading: true)? = byBytes.requestArrived(self.request(2, bytes: 600)) else {
            Issue.record("a call past the byte budget must pause reading")
            return
        }
        byBytes.replyWaiting(500)  // a reply the caller does not read holds bytes too
        let finishAgain = byBytes.handlerFinished(1, isCall: true, released: 600)
        #expect(!finishAgain.resumeReading)
        let finishThird = byBytes.handlerFinished(2, isCall: true, released: 1_100)
        #expect(finishThird.resumeReading)
        #expect(byBytes.inbound.bytes == 0)
    }

    @Test func anIdInUseByARunningOrAQueuedCallOrIdZeroIsAViolation() {
        var machine = self.machine(concurrent: 1)
        _ = machine.requestArrived(self.request(1))
        _ = machine.requestArrived(self.request(2))  // queued
        for id: UInt64 in [0, 1, 2] {
            guard case .reusedID? = machine.requestArrived(self.request(id)) else {
                Issue.record("id \(id) was accepted")
                continue
            }
        }
        // One-way messages carry no id to clash.
        guard case .queued? = machine.requestArrived(self.request(1, isCall: false)) else {
            Issue.record("a one-way message was refused")
            return
        }
    }

    @Test func aCancelBeforeTheTaskExistsCancelsItWhenAttached() {
        var machine = self.machine()
        _ = machine.requestArrived(self.request(1))
        guard case .none = machine.cancelRequested(1) else {
            Issue.record("nothing to cancel yet")
            return
        }
        let cancelAtOnce = machine.handlerTaskCreated(Self.task1, for: 1)
        #expect(cancelAtOnce)
        guard case .cancel(let task) = machine.cancelRequested(1), task == Self.task1 else {
            Issue.record("a running task is cancelled")
            return
        }
        // A task attached after its handler finished is not kept.
        _ = machine.handlerFinished(1, isCall: true, released: 100)
        let cancelAtOnceAgain = machine.handlerTaskCreated(Self.task1, for: 1)
        #expect(!cancelAtOnceAgain)
    }

    @Test func aCancelledQueuedCallIsDroppedAndNeverStarts() {
        var machine = self.machine(concurrent: 1, queued: 1)
        _ = machine.requestArrived(self.request(1))
        _ = machine.requestArrived(self.request(2, bytes: 700))
        guard case .dropped(resumeReading: true) = machine.cancelRequested(2) else {
            Issue.record("a queued call is dropped on cancel and reading resumes")
            return
        }
        #expect(machine.inbound.queuedCount == 0)
        #expect(machine.inbound.bytes == 100)
        let finish = machine.handlerFinished(1, isCall: true, released: 100)
        #expect(finish.next == nil)
    }

    @Test func handlersPastTheirCallersDeadlineAreCancelledByTheTimer() {
        var machine = self.machine(concurrent: 3)
        guard case .start(_, armTimerAt: let arm, _)? = machine.requestArrived(self.request(1, deadline: 2)) else {
            Issue.record("the call should start")
            return
        }
        #expect(arm == self.at(2))
        let timerToCancel = machine.handlerTimerArmed(self.timer("timer"), at: self.at(2))
        #expect(timerToCancel == nil)
        _ = machine.requestArrived(self.request(2, deadline: 2))  // task not attached yet
        _ = machine.requestArrived(self.request(3, deadline: 6))
        _ = machine.handlerTaskCreated(Self.task1, for: 1)
        _ = machine.handlerTaskCreated(Self.task3, for: 3)
        let expiry = machine.handlerTimerFired(at: self.at(2))
        #expect(expiry.overdue == [Self.task1])
        #expect(expiry.armTimerAt == self.at(6))
        let cancelAtOnce = machine.handlerTaskCreated(Self.task2, for: 2)
        #expect(cancelAtOnce)  // cancelled as it attaches
        // Already told to stop: not cancelled again.
        let laterExpiry = machine.handlerTimerFired(at: self.at(3))
        #expect(laterExpiry.overdue.isEmpty)
    }

    @Test func afterReplyWorkIsHandedBackWhenTheHandlerFinishes() {
        var machine = self.machine()
        _ = machine.requestArrived(self.request(1))
        let registered = machine.addAfterReply({}, to: 1)
        #expect(registered)
        let registeredAgain = machine.addAfterReply({}, to: 9)
        #expect(!registeredAgain)
        let registeredThird = machine.addAfterReply({}, to: 0)
        #expect(!registeredThird)
        let finish = machine.handlerFinished(1, isCall: true, released: 100)
        #expect(finish.afterReply.count == 1)
    }

    @Test func theEndCancelsRunningHandlersDropsQueuedOnesAndHandsBackBigMemoryOnce() {
        var machine = self.machine(concurrent: 1)
        _ = machine.requestArrived(self.request(1, bytes: 8 << 20))
        _ = machine.handlerTaskCreated(Self.task1, for: 1)
        _ = machine.requestArrived(self.request(2))
        _ = machine.handlerTimerArmed(self.timer("timer"), at: self.at(9))
        let closure = machine.transportClosed { _ in Self.lost }
        #expect(closure?.handlers.tasks == [Self.task1])
        #expect(self.names(closure?.handlers.timers ?? []) == ["timer"])
        #expect(closure?.handlers.releaseMemory == false)  // a handler still runs
        #expect(machine.inbound.queuedCount == 0)
        let arrival = machine.requestArrived(self.request(3))
        #expect(arrival == nil)
        let finish = machine.handlerFinished(1, isCall: true, released: 8 << 20)
        #expect(finish.next == nil)
        #expect(finish.releaseMemory)
        #expect(machine.inbound.bytes == 0)
        let timerToCancel = machine.handlerTimerArmed(self.timer("late"), at: self.at(9))
        #expect(self.name(timerToCancel) == "late")
    }
}
