package import IntercomWire

/// The one error vocabulary of Intercom: what went wrong (``code``), what a
/// person can do about it (``message``) and where (``context``).
///
/// ```swift
/// do {
///     let ack = try await peer.call("camera.exposure.set", SetExposure(ms: 10), returning: Ack.self)
/// } catch let error as IntercomError where error.code == .timeout {
///     // the handler did not answer within the call's timeout
/// }
/// ```
public struct IntercomError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A kind of failure. New codes may be added in later versions; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's stable name, also its form on the wire.
        public let name: String
        private init(_ name: String) { self.name = name }

        /// Rebuilds a code from its wire name; unknown names are kept as they are.
        public init(wireName: String) { self.name = wireName }

        /// The call did not complete before its deadline.
        public static let timeout = Code("timeout")
        /// The other side closed the connection or died; the call's outcome is unknown.
        public static let peerLost = Code("peerLost")
        /// No handler is registered for the method and there is no fallback handler.
        public static let unknownMethod = Code("unknownMethod")
        /// The bytes on the connection broke the protocol; the connection was closed.
        public static let protocolViolation = Code("protocolViolation")
        /// The two sides share no protocol version or codec (the message names both offers).
        public static let incompatiblePeer = Code("incompatiblePeer")
        /// A frame was larger than the receiving side accepts.
        public static let frameTooLarge = Code("frameTooLarge")
        /// A payload did not decode as the expected type, or a value did not encode.
        public static let invalidPayload = Code("invalidPayload")
        /// The handler threw; ``IntercomError/remoteType`` names the thrown type.
        public static let remote = Code("remote")
        /// The call was cancelled (the caller's task, or the handler's deadline).
        public static let cancelled = Code("cancelled")
        /// This side closed the connection (or listener) before or during the operation.
        public static let closed = Code("closed")
        /// A registration conflicts with an existing one (for example a method registered twice).
        public static let conflict = Code("conflict")
        /// A method, topic or service name is not well formed.
        public static let invalidName = Code("invalidName")
        /// The peer is busy: its queues are full.
        public static let busy = Code("busy")
        /// The connection could not be established (no listener, refused, bad path, …).
        public static let connectionFailed = Code("connectionFailed")
        /// A name is already claimed by another service.
        public static let nameInUse = Code("nameInUse")
        /// The named service is not running.
        public static let serviceNotFound = Code("serviceNotFound")
        /// The operating system refused access.
        public static let permissionDenied = Code("permissionDenied")
        /// A declared command has no reachable handler (checked at start-up).
        public static let missingHandler = Code("missingHandler")
        /// No distributed actor with that id lives at its endpoint (never did, or was deinitialised).
        public static let actorNotFound = Code("actorNotFound")
        /// The other side could not be authenticated, or refused this side's
        /// credentials (a TLS certificate that is expired, from an untrusted
        /// authority, for another host, or missing); the message names the cause.
        public static let authenticationFailed = Code("authenticationFailed")
        /// Settings that cannot work (an unreadable certificate file, a key that
        /// does not match, a plain-TCP endpoint without permission to use one).
        public static let invalidConfiguration = Code("invalidConfiguration")
        /// The service is suspended — restarting on purpose — and the call was not
        /// sent to it: it never ran, so it is safe to make again (a `ServiceHandle`
        /// does, to the instance that comes back).
        public static let suspended = Code("suspended")

        /// The code's name.
        public var description: String { self.name }
    }

    /// Where a failure happened.
    public struct Context: Hashable, Sendable {
        /// The method or topic involved, if any.
        public var method: String?
        /// The call's correlation id, if the failure belongs to a call.
        public var callID: UInt64?
        /// The name the other side gave in its handshake, if known.
        public var peer: String?

        /// Creates a context.
        public init(method: String? = nil, callID: UInt64? = nil, peer: String? = nil) {
            self.method = method
            self.callID = callID
            self.peer = peer
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// A message a person can act on.
    public var message: String
    /// Where it happened.
    public var context: Context
    /// For ``Code/remote`` errors: the fully qualified name of the type the handler threw.
    public var remoteType: String?
    /// The error underneath, when this one stands for another: the system call's
    /// (NIO's `IOError`), the codec's (`EncodingError`, `DecodingError`), the
    /// protocol violation's. For inspecting, not for equality: two errors that
    /// differ only in their causes are equal.
    public var cause: (any Error)? {
        get { self.causeBox?.error }
        set { self.causeBox = newValue.map(CauseBox.init) }
    }
    private var causeBox: CauseBox?

    /// Holds a cause whose type does not promise `Sendable` (the codecs' errors carry
    /// `Any` values): it is set once, when the error is made, and only read after.
    private struct CauseBox: @unchecked Sendable {
        let error: any Error
    }

    /// Creates an error.
    public init(
        _ code: Code, _ message: String, context: Context = Context(), remoteType: String? = nil,
        cause: (any Error)? = nil
    ) {
        self.code = code
        self.message = message
        self.context = context
        self.remoteType = remoteType
        self.causeBox = cause.map(CauseBox.init)
    }

    /// Equal code, message, context and remote type (the cause is not compared).
    public static func == (lhs: IntercomError, rhs: IntercomError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.context == rhs.context
            && lhs.remoteType == rhs.remoteType
    }

    /// Hashes what ``==`` compares.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.code)
        hasher.combine(self.message)
        hasher.combine(self.context)
        hasher.combine(self.remoteType)
    }

    /// The code, context and message on one line.
    public var description: String {
        var parts = ["IntercomError.\(self.code)"]
        if let method = self.context.method { parts.append("method=\(method)") }
        if let id = self.context.callID { parts.append("call=\(id)") }
        if let peer = self.context.peer { parts.append("peer=\(peer)") }
        if let type = self.remoteType { parts.append("type=\(type)") }
        return parts.joined(separator: " ") + ": " + self.message
    }

    package init(_ error: ProtocolError, peer: String?) {
        self.init(Code(protocolError: error.code), error.message, context: Context(peer: peer), cause: error)
    }
}

extension IntercomError.Code {
    /// What a protocol violation is to users: `frameTooLarge` and
    /// `incompatiblePeer` are worth telling apart; the other violations
    /// (`badMagic`, `unsupportedVersion`, …, named in the message) are all
    /// ``protocolViolation``.
    package init(protocolError code: ProtocolError.Code) {
        switch code {
        case .frameTooLarge: self = .frameTooLarge
        case .incompatiblePeer: self = .incompatiblePeer
        default: self = .protocolViolation
        }
    }

    /// The code of an error frame's body: a violation's name (docs/PROTOCOL.md)
    /// is mapped as ``init(protocolError:)`` does; other names are kept.
    package init(errorFrameCode name: String) {
        if let violation = ProtocolError.Code(name: name) {
            self.init(protocolError: violation)
        } else {
            self.init(wireName: name)
        }
    }
}
