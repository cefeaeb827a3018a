/// An instant on a connection's clock, as a plain value.
///
/// `ContinuousClock.Instant` is resilient (not `@frozen`): outside the standard
/// library, a struct or enum that holds one has no fixed layout, so every copy,
/// optional and enum payload of it — a call's deadline in each request, entry
/// and action of the state machine — went through runtime metadata and value
/// witnesses, which showed in the call path's profile. This holds the same
/// instant as a `Duration` (frozen) from a fixed origin; conversions happen
/// where the connection meets its transport's clock.
package struct Deadline: Comparable, Hashable, Sendable {
    /// Time since ``origin``; negative for instants before it (a virtual clock may have those).
    package let sinceOrigin: Duration

    /// A fixed instant of this process's continuous clock, the zero of every `Deadline`.
    package static let origin = ContinuousClock.now

    package init(_ instant: ContinuousClock.Instant) {
        self.sinceOrigin = instant - Self.origin
    }

    private init(sinceOrigin: Duration) {
        self.sinceOrigin = sinceOrigin
    }

    /// The instant on the continuous clock.
    package var instant: ContinuousClock.Instant { Self.origin + self.sinceOrigin }

    /// This deadline moved by `duration`.
    package func advanced(by duration: Duration) -> Deadline {
        Deadline(sinceOrigin: self.sinceOrigin + duration)
    }

    /// The time from `other` to `self`.
    package static func - (lhs: Deadline, rhs: Deadline) -> Duration {
        lhs.sinceOrigin - rhs.sinceOrigin
    }

    package static func < (lhs: Deadline, rhs: Deadline) -> Bool {
        lhs.sinceOrigin < rhs.sinceOrigin
    }
}
