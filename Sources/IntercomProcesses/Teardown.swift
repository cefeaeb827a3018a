#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// A POSIX signal, by name rather than by number.
///
/// ```swift
/// worker.send(.terminate)
/// worker.send(Signal(rawValue: SIGRTMIN + 1))   // any other signal by its number
/// ```
public struct Signal: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The signal's number on this platform.
    public let rawValue: Int32

    /// The signal numbered `rawValue`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// `SIGTERM`: please end (what a graceful stop sends after the goodbye).
    public static let terminate = Signal(rawValue: SIGTERM)
    /// `SIGKILL`: ends the process at once; it cannot be caught.
    public static let kill = Signal(rawValue: SIGKILL)
    /// `SIGINT`: what Ctrl-C sends.
    public static let interrupt = Signal(rawValue: SIGINT)
    /// `SIGHUP`: conventionally "reload your configuration".
    public static let hangup = Signal(rawValue: SIGHUP)
    /// `SIGQUIT`.
    public static let quit = Signal(rawValue: SIGQUIT)
    /// `SIGUSR1`, for the program's own use.
    public static let user1 = Signal(rawValue: SIGUSR1)
    /// `SIGUSR2`, for the program's own use.
    public static let user2 = Signal(rawValue: SIGUSR2)
    /// `SIGSTOP`: suspends the process; it cannot be caught.
    public static let stop = Signal(rawValue: SIGSTOP)
    /// `SIGCONT`: resumes a stopped process.
    public static let `continue` = Signal(rawValue: SIGCONT)

    /// `SIGTERM`, `SIGKILL`, … (or `signal 34` for one without a name here).
    public var description: String {
        let names: [Int32: String] = [
            SIGTERM: "SIGTERM", SIGKILL: "SIGKILL", SIGINT: "SIGINT", SIGHUP: "SIGHUP", SIGQUIT: "SIGQUIT",
            SIGUSR1: "SIGUSR1", SIGUSR2: "SIGUSR2", SIGSTOP: "SIGSTOP", SIGCONT: "SIGCONT", SIGSEGV: "SIGSEGV",
            SIGABRT: "SIGABRT", SIGPIPE: "SIGPIPE",
        ]
        return names[self.rawValue] ?? "signal \(self.rawValue)"
    }
}

/// How a worker is stopped, as data: steps tried in order, each followed by a wait
/// for the process to exit; whatever still runs after the last one is killed
/// (`SIGKILL`) and reaped. (swift-subprocess's `TeardownStep`, with the
/// connection's goodbye as a first step.)
///
/// ```swift
/// await worker.stop(.graceful(.seconds(5)))   // goodbye, 2.5 s, SIGTERM, 2.5 s, SIGKILL
/// await worker.stop(Teardown(steps: [.signal(.interrupt, wait: .seconds(1))]))
/// await worker.stop(.immediate)                // SIGKILL
/// ```
public struct Teardown: Sendable, Hashable {
    /// One step: an action, then up to `wait` for the process to exit.
    public struct Step: Sendable, Hashable {
        enum Action: Sendable, Hashable {
            case goodbye
            case signal(Signal)
        }

        let action: Action
        /// How long to wait for the exit after the action before the next step.
        public let wait: Duration

        /// Closes the connection (a goodbye frame): a worker that serves its parent
        /// until the connection ends then exits on its own.
        public static func goodbye(wait: Duration) -> Step { Step(action: .goodbye, wait: wait) }

        /// Sends `signal`.
        public static func signal(_ signal: Signal, wait: Duration) -> Step { Step(action: .signal(signal), wait: wait) }
    }

    /// The steps before the final `SIGKILL`.
    public var steps: [Step]

    /// The given steps, then `SIGKILL`.
    public init(steps: [Step]) { self.steps = steps }

    /// Goodbye and half of `grace` to exit on its own, then `SIGTERM` and the other
    /// half, then `SIGKILL`: a worker that ignores both is gone within `grace`
    /// plus the time the kernel takes to reap it. The default of ``Worker/stop(_:)``
    /// with 5 seconds.
    public static func graceful(_ grace: Duration = .seconds(5)) -> Teardown {
        Teardown(steps: [.goodbye(wait: grace / 2), .signal(.terminate, wait: grace / 2)])
    }

    /// `SIGKILL` at once (the connection ends when the process does).
    public static let immediate = Teardown(steps: [])
}
