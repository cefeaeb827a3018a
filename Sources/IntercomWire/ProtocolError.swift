/// A violation of the Intercom wire protocol found while reading input.
///
/// Thrown (typed) by ``FrameDecoder`` and the handshake parser. Every case names
/// what was wrong so that the log line or the error a user sees can be acted on.
/// The connection that produced it is closed; the process and its other
/// connections are unaffected.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of violation this is. Compare with the static members.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case badMagic, unsupportedVersion, unknownFrameKind, malformedHeader, frameTooLarge
            case extensionTooLarge, malformedExtension, malformedHandshake, incompatiblePeer
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The first two bytes are not `IC`: the peer does not speak Intercom.
        public static let badMagic = Code(.badMagic)
        /// The frame's protocol version is not one this side speaks.
        public static let unsupportedVersion = Code(.unsupportedVersion)
        /// The frame kind byte is not a known kind.
        public static let unknownFrameKind = Code(.unknownFrameKind)
        /// The fixed header holds an impossible combination of fields.
        public static let malformedHeader = Code(.malformedHeader)
        /// The payload length exceeds the receiver's maximum frame size.
        public static let frameTooLarge = Code(.frameTooLarge)
        /// The header extension exceeds the receiver's limit.
        public static let extensionTooLarge = Code(.extensionTooLarge)
        /// The header extension's fields do not parse.
        public static let malformedExtension = Code(.malformedExtension)
        /// A hello frame's payload does not parse.
        public static let malformedHandshake = Code(.malformedHandshake)
        /// The peers share no protocol version or codec.
        public static let incompatiblePeer = Code(.incompatiblePeer)

        /// The code's name, also its form in an error frame's body (docs/PROTOCOL.md).
        public var description: String { "\(self.value)" }

        /// Every code, for mapping the names that arrive in error frames.
        public static let all: [Code] = [
            .badMagic, .unsupportedVersion, .unknownFrameKind, .malformedHeader, .frameTooLarge,
            .extensionTooLarge, .malformedExtension, .malformedHandshake, .incompatiblePeer,
        ]

        /// The code with this name, if it is one.
        public init?(name: String) {
            guard let code = Self.all.first(where: { $0.description == name }) else { return nil }
            self = code
        }
    }

    /// What kind of violation this is.
    public var code: Code
    /// What was wrong, in words a person can act on.
    public var message: String

    /// Creates a protocol error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The code and message on one line.
    public var description: String { "ProtocolError(\(self.code)): \(self.message)" }
}
