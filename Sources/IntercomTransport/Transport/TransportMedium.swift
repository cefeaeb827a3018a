/// What carries a connection's frames, for diagnostics and tools (`intercom
/// list`, logs, benchmarks): the behaviour of a connection is the same on every
/// medium. (A struct, not an enum: more media may come.)
public struct TransportMedium: Sendable, Hashable, CustomStringConvertible {
    /// The medium's name: `socket`, `shared memory`, `tcp`, `tls`, `in-memory`.
    public let name: String

    private init(_ name: String) { self.name = name }

    /// A Unix socket, socket pair or inherited descriptor (standard input and output).
    public static let socket = TransportMedium("socket")
    /// Two shared-memory rings, with the connection's socket kept beside them to
    /// tell when the other side is gone.
    public static let sharedMemory = TransportMedium("shared memory")
    /// Plain TCP (another host, or this one by address).
    public static let tcp = TransportMedium("tcp")
    /// TLS over TCP.
    public static let tls = TransportMedium("tls")
    /// Frames between two peers in one process (`IntercomTesting`), on virtual time.
    public static let inMemory = TransportMedium("in-memory")

    /// The name.
    public var description: String { self.name }
}
