internal import IntercomTransport
internal import IntercomCore
#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What a live service on a bus says about itself: the `<name>.json` it writes
/// next to its socket once it is ready for connections.
public struct ServiceInfo: Codable, Sendable, Hashable {
    /// The service's name on the bus.
    public var name: String
    /// The serving process.
    public var pid: Int32
    /// When the service started serving.
    public var startTime: Date
    /// The wire protocol version it speaks.
    public var protocolVersion: Int
    /// The methods its router handles, sorted.
    public var methods: [String]
    /// The network addresses it also listens on (`tls://0.0.0.0:7411`), if any.
    public var addresses: [String]?
    /// The properties it declares (``Router/property(_:initial:validate:)``), sorted, if any.
    public var properties: [String]?

    /// Creates a record.
    public init(name: String, pid: Int32, startTime: Date, protocolVersion: Int, methods: [String]) {
        self.name = name
        self.pid = pid
        self.startTime = startTime
        self.protocolVersion = protocolVersion
        self.methods = methods
    }
}
