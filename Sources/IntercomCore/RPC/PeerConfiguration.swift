public import IntercomTransport
public import IntercomWire
public import Logging
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

extension Peer {
    /// How a connection behaves. Every field has a documented default.
    public struct Configuration: Sendable {
        /// The name this side gives in the handshake (default: the process name).
        public var name: String
        /// The timeout of a call that passes none: 30 seconds.
        public var defaultCallTimeout: Duration = .seconds(30)
        /// How long a receive that passes no timeout waits for a message: nil, as
        /// long as it takes. (A `timeout: nil` argument always means "the
        /// connection's default"; for calls that is ``defaultCallTimeout``.)
        public var defaultReceiveTimeout: Duration? = nil
        /// How many handlers may run at once for calls arriving on one connection:
        /// 64 by default; 1 makes the connection strictly serial (calls are handled
        /// one after another, in arrival order).
        public var maxConcurrentHandlers: Int = 64
        /// Calls waiting for a free handler slot before the connection stops reading
        /// (so the sender's backpressure kicks in): 1,024.
        public var maxQueuedCalls: Int = 1024
        /// Bytes that calls arriving on one connection may hold at once — queued
        /// and running requests and the replies waiting for the caller to read
        /// them: 64 MiB. Past it the connection stops reading (so the sender's
        /// backpressure kicks in) instead of allocating more; one request is always
        /// admitted, so a single frame up to ``WireLimits/maxFrameSize`` still goes through.
        public var requestByteBudget: Int = 64 << 20
        /// Unsolicited messages held for ``Peer/receive(as:timeout:)`` before the
        /// connection stops reading: 1,024.
        public var inboxCapacity: Int = 1024
        /// Bytes of unsolicited messages held for ``Peer/receive(as:timeout:)``
        /// before the connection stops reading: 64 MiB (reading resumes once
        /// receivers took half). A single message larger than this still goes through.
        public var inboxByteCapacity: Int = 64 << 20
        /// Outbound bytes buffered before senders suspend: 1 MiB (they resume below ``outboundLowWatermark``).
        public var outboundHighWatermark: Int = 1 << 20
        /// Outbound bytes under which suspended senders resume: 256 KiB.
        public var outboundLowWatermark: Int = 256 << 10
        /// Input limits (frame size, nesting, string and collection lengths).
        public var limits: WireLimits = .defaults
        /// The codec this side prefers; the handshake settles on one both speak.
        public var preferredCodec: CodecID = .binary
        /// Whether calls and connections are reported through swift-metrics: off
        /// by default. See ``MetricsReporting``.
        public var metrics: MetricsReporting = .off
        /// Whether calls and one-way messages are traced through
        /// swift-distributed-tracing: off by default. See ``TracingReporting``.
        public var tracing: TracingReporting = .off
        /// Whether payloads this side sends are compressed: off by default (on one
        /// host, compressing costs more than the copy it saves). See ``Compression``.
        public var compression: Compression = .off
        /// Codecs of your own (``CustomPayloadCodec``), most preferred first (at
        /// most 8). When both sides list one, the connection uses it — the name
        /// furthest up both lists — instead of ``preferredCodec``; when they share
        /// none, the built-in codecs are negotiated as usual.
        public var customCodecs: [any CustomPayloadCodec] = []
        /// How long the handshake may take: 10 seconds.
        public var handshakeTimeout: Duration = .seconds(10)
        /// Where handlers run: ``HandlerExecution/concurrencyPool`` by default.
        public var handlerExecution: HandlerExecution = .concurrencyPool
        /// Error types rethrown as themselves when a handler on the other side throws them.
        public var remoteErrors = RemoteErrorTypes()
        /// Whether and how the connection moves to shared memory when both sides
        /// are on one host (Linux; on by default, see ``SharedMemoryOptions``).
        public var sharedMemory = SharedMemoryOptions()
        /// Who may serve a Unix socket this side connects to: the server process's
        /// uid (from the kernel, `SO_PEERCRED`) must be one of these, checked before
        /// a byte is sent. This user and root by default; nil trusts anyone.
        public var trustedServerUIDs: Set<UInt32>? = [UInt32(getuid()), 0]
        /// This side's certificate, key and trusted authorities for `tls://`
        /// endpoints (connecting and listening); nil: TLS is not configured, and
        /// such endpoints are refused with an error saying so.
        public var tls: TLSOptions?
        /// Whether this side may connect to `tcp://` endpoints: false, because
        /// plain TCP neither encrypts nor authenticates (either side could be
        /// anyone on the path). Use `tls://` across hosts; set this for trusted
        /// networks and benchmarks. (A listener's permission is its
        /// ``AccessPolicy/allowsUnauthenticated``.)
        public var allowsPlainTCP = false
        /// How a vanished other side is noticed: ``Heartbeat/automatic`` (on TCP
        /// and TLS every 5 s, lost after 20 s; off locally, where the kernel tells).
        public var heartbeat: Heartbeat = .automatic
        /// Where the connection logs (protocol violations at `warning`).
        public var logger: Logger = Logger(label: "intercom.peer")

        /// ``logger`` with this side's name as `service` metadata: what the
        /// transports and listeners log with, before a connection knows its peer.
        var serviceLogger: Logger {
            var logger = self.logger
            logger[metadataKey: "service"] = "\(self.name)"
            return logger
        }

        /// Creates a configuration with the defaults; `name` defaults to the process name.
        public init(name: String? = nil) {
            self.name = name ?? ProcessInfo.processInfo.processName
        }

        /// The defaults, changed by `configure`.
        public static func defaults(configure: (inout Configuration) -> Void) -> Configuration {
            var configuration = Configuration()
            configure(&configuration)
            return configuration
        }
    }

    /// Where a connection's handlers run. (A struct, not an enum: more places
    /// may come, and adding one must not break a user's `switch`.)
    public struct HandlerExecution: Sendable, Hashable {
        private enum Place: Hashable { case concurrencyPool, connectionThread }
        private let place: Place

        /// On Swift's global concurrent executor: safe for handlers that compute for a while.
        public static let concurrencyPool = HandlerExecution(place: .concurrencyPool)
        /// On the thread that reads the connection: no thread hop per call, the
        /// fastest choice, but a handler that computes for long delays every
        /// connection on that event loop. For short handlers.
        public static let connectionThread = HandlerExecution(place: .connectionThread)
    }
}

/// Error types a caller rethrows as themselves when the handler threw them.
///
/// The handler side encodes any thrown error that is `Encodable` into the error
/// frame with its type name (`String(reflecting:)`, so the type must live in a
/// module both processes link); the calling side decodes it if the type is
/// registered here, and otherwise throws ``IntercomError`` `remote` with the
/// type name and message.
public struct RemoteErrorTypes: Sendable {
    typealias Decode = @Sendable (ByteBuffer, PayloadCodec) throws -> any Error
    var decoders: [String: Decode] = [:]

    /// An empty set.
    public init() {}

    /// Adds `type`.
    public mutating func register<E: Error & Decodable>(_ type: E.Type) {
        self.decoders[String(reflecting: type)] = { buffer, codec in try codec.decode(E.self, from: buffer) }
    }
}

internal import NIOCore
