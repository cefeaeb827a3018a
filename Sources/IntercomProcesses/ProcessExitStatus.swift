internal import IntercomTransport
internal import IntercomCore
internal import IntercomBus
/// How a process ended.
public enum ProcessExitStatus: Sendable, Hashable, CustomStringConvertible {
    /// It called `exit` (or returned from `main`) with this code.
    case exited(Int32)
    /// A signal killed it (`SIGKILL` = 9, `SIGSEGV` = 11, …).
    case signaled(Int32)

    /// Exit code 0.
    public var isSuccess: Bool { self == .exited(0) }

    /// `exited(1)`, `signaled(9)`.
    public var description: String {
        switch self {
        case .exited(let code): "exited(\(code))"
        case .signaled(let signal): "signaled(\(signal))"
        }
    }
}
