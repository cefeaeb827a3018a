internal import IntercomTransport
/// Bookkeeping for one event-loop timer that serves many deadlines.
///
/// Arming a timer per call costs an allocation plus a heap insert and removal on
/// the event loop — about a tenth of a small call's round trip. Instead, a table
/// of calls arms a timer only when a new deadline comes before the one already
/// armed (with equal timeouts, almost never), and when that timer fires it
/// handles everything overdue and arms the next, unless a later timer still armed
/// already covers it. Timers are never cancelled while the connection lives.
/// When the connection ends, every timer still armed is cancelled
/// (``takeArmed()``): a 30-second deadline timer per connection otherwise kept
/// its task (and the memory it holds) on the event loop long after the
/// connection was gone.
///
/// Not synchronised and no I/O: it lives inside the state machine it serves, which
/// arms and cancels the timers outside its lock.
struct DeadlineTimer {
    /// When the earliest armed timer fires, if one is armed.
    private var armedAt: Deadline?
    /// The timers armed and not yet fired, to cancel when the connection ends.
    private var armed: [(at: Deadline, work: any ScheduledWork)] = []

    /// Whether a timer must be armed for `deadline` (none is armed, or the armed
    /// one fires later). If so, the caller arms it; it is recorded as armed.
    mutating func needsTimer(for deadline: Deadline) -> Bool {
        if let armedAt, armedAt <= deadline { return false }
        self.armedAt = deadline
        return true
    }

    /// A timer fired at `now`: the armed one is used up if it was due.
    mutating func fired(at now: Deadline) {
        self.armed.removeAll { $0.at <= now }
        // A later timer still armed covers the deadlines up to its own.
        if let armedAt, armedAt <= now { self.armedAt = self.armed.lazy.map(\.at).min() }
    }

    /// Records the timer armed for `deadline` (after ``needsTimer(for:)`` said so).
    mutating func record(_ work: any ScheduledWork, at deadline: Deadline) {
        self.armed.append((deadline, work))
    }

    /// The timers still armed, for the caller to cancel (outside its lock); none is armed afterwards.
    mutating func takeArmed() -> [any ScheduledWork] {
        defer {
            self.armed = []
            self.armedAt = nil
        }
        return self.armed.map(\.work)
    }
}
