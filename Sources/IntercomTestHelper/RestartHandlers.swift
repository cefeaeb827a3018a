import Intercom
#if canImport(Glibc)
import Glibc
#endif

/// Handlers for the suspend tests: a call that waits until released, and one
/// that suspends the service (to let the next instance take over).
func registerRestartHandlers(on router: Router, holder: ServiceHolder) throws {
    let gate = HoldGate()
    try router.register("restart.pid") { (_: Int, _: CallContext) in getpid() }
    // Answers once a `restart.release` message arrives: a call running while the service suspends.
    try router.register("restart.hold") { (_: Int, _: CallContext) -> Int32 in
        await gate.wait()
        return getpid()
    }
    try router.register("restart.release") { (_: Int, _: CallContext) in await gate.release() }
    // Suspends (coming back within the given milliseconds) once the reply is queued;
    // the process then exits as after a quit.
    // guide: suspend
    try router.register("restart.suspend") { (milliseconds: Int, context: CallContext) -> Bool in
        context.afterReply {
            try? await holder.service?.suspend(backWithin: .milliseconds(milliseconds), drainTimeout: .seconds(30))
        }
        return true
    }
    // end guide
}

private actor HoldGate {
    private var released = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if self.released { return }
        await withCheckedContinuation { self.waiters.append($0) }
    }

    func release() {
        self.released = true
        for waiter in self.waiters { waiter.resume() }
        self.waiters.removeAll()
    }
}
