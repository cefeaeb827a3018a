package import Dispatch

extension DispatchTime {
    /// Now plus `duration` (negative durations count as zero; anything beyond
    /// a year is clamped), for the few waits that run on dispatch rather than
    /// Swift concurrency: a blocking wait, a timer that must still fire in a
    /// cancelled task, a read source's timeout.
    package static func after(_ duration: Duration) -> DispatchTime {
        let (seconds, attoseconds) = max(duration, .zero).components
        let nanoseconds = min(seconds, 365 * 86_400) * 1_000_000_000 + attoseconds / 1_000_000_000
        return .now() + .nanoseconds(Int(nanoseconds))
    }
}
