public import IntercomTransport

/// A client for one API of the other side (epyrpc's API objects): method names
/// relative to its prefix, its own default timeout, and whether its calls
/// expect a reply by default.
///
/// ```swift
/// let camera = peer.api("camera", timeout: .seconds(2))
/// let ack = try await camera.exposure.call("set", SetExposure(ms: 10), returning: Ack.self)
/// try await camera.lights.invoke("on", true)   // waits for completion: calls expect replies
/// let log = peer.api("log", expectsReply: false)
/// try await log.invoke("line", "started")      // a one-way message
/// ```
@dynamicMemberLookup
public struct PeerAPI: Sendable {
    /// The connection.
    public let peer: Peer
    /// The prefix, without the trailing dot (`camera.exposure`).
    public let prefix: String
    /// The timeout of calls that name none (nil: the peer's default).
    public var timeout: Duration?
    /// Whether ``invoke(_:_:)`` waits for the handler (a call) or only sends
    /// (a one-way message).
    public var expectsReply: Bool

    /// The API `prefix.name` inside this one, with the same defaults:
    /// `peer.api("camera").exposure` is `camera.exposure`.
    public subscript(dynamicMember name: String) -> PeerAPI {
        self.api(name)
    }

    /// The API `prefix.name` inside this one, with the same defaults.
    public func api(_ name: String) -> PeerAPI {
        PeerAPI(peer: self.peer, prefix: self.qualified(name), timeout: self.timeout, expectsReply: self.expectsReply)
    }

    /// Calls `prefix.method` and returns its reply.
    ///
    /// - Throws: as ``Peer/call(_:_:returning:timeout:)``.
    public func call<Request: Encodable, Response: Decodable>(
        _ method: String, _ request: Request, returning: Response.Type = Response.self, timeout: Duration? = nil
    ) async throws -> Response {
        try await self.peer.call(self.qualified(method), request, returning: Response.self, timeout: timeout ?? self.timeout)
    }

    /// Calls `prefix.method` and waits for it to complete, ignoring any reply value.
    ///
    /// - Throws: as ``Peer/call(_:_:returning:timeout:)``.
    public func call<Request: Encodable>(_ method: String, _ request: Request, timeout: Duration? = nil) async throws {
        try await self.peer.call(self.qualified(method), request, timeout: timeout ?? self.timeout)
    }

    /// Sends `prefix.method` as a one-way message.
    ///
    /// - Throws: as ``Peer/send(_:_:)``.
    public func send<Message: Encodable>(_ method: String, _ message: Message) async throws(IntercomError) {
        try await self.peer.send(self.qualified(method), message)
    }

    /// Calls `prefix.method` and waits for completion if this API expects
    /// replies, else sends it as a one-way message.
    ///
    /// - Throws: as ``call(_:_:timeout:)`` or ``send(_:_:)``.
    public func invoke<Request: Encodable>(_ method: String, _ request: Request) async throws {
        if self.expectsReply {
            try await self.call(method, request)
        } else {
            try await self.send(method, request)
        }
    }

    func qualified(_ name: String) -> String { self.prefix + "." + name }
}

extension Peer {
    /// A client for the other side's API under `prefix`.
    ///
    /// - Parameters:
    ///   - timeout: the default timeout of its calls (nil: the peer's).
    ///   - expectsReply: whether ``PeerAPI/invoke(_:_:)`` makes calls (true) or
    ///     sends one-way messages (false).
    public func api(_ prefix: String, timeout: Duration? = nil, expectsReply: Bool = true) -> PeerAPI {
        PeerAPI(peer: self, prefix: prefix, timeout: timeout, expectsReply: expectsReply)
    }
}
