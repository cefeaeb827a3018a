public import IntercomTransport

/// The part of a ``Router`` under one name prefix (epyrpc's sub-API
/// `setHandler`): handlers registered here have names relative to it, so the
/// code that serves `camera.exposure` need not spell it out.
///
/// ```swift
/// let exposure = try router.namespace("camera.exposure")
/// try exposure.register("set") { (request: SetExposure, _) in … }   // camera.exposure.set
/// try exposure.register("get") { (_: Int, _) in current }           // camera.exposure.get
/// ```
public struct RouterNamespace: Sendable {
    /// The router the handlers go to.
    public let router: Router
    /// The prefix, without the trailing dot (`camera.exposure`).
    public let prefix: String

    /// Registers a handler that answers calls to `prefix.name` with a value.
    ///
    /// - Throws: as ``Router/register(_:_:)-(_,(Request,CallContext)->Response)``.
    public func register<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        _ name: String, _ handler: @escaping @Sendable (Request, CallContext) async throws -> Response
    ) throws(IntercomError) {
        try self.router.register(self.qualified(name), handler)
    }

    /// Registers a handler without a result for `prefix.name`.
    ///
    /// - Throws: as ``Router/register(_:_:)-(_,(Request,CallContext)->Void)``.
    public func register<Request: Decodable & Sendable>(
        _ name: String, _ handler: @escaping @Sendable (Request, CallContext) async throws -> Void
    ) throws(IntercomError) {
        try self.router.register(self.qualified(name), handler)
    }

    /// The namespace `prefix.name` inside this one.
    ///
    /// - Throws: ``IntercomError/Code/invalidName`` if the result is not a valid name.
    public func namespace(_ name: String) throws(IntercomError) -> RouterNamespace {
        try self.router.namespace(self.qualified(name))
    }

    /// The registered names under this prefix, relative to it, sorted.
    public var methods: [String] {
        let start = self.prefix + "."
        return self.router.methods.filter { $0.hasPrefix(start) }.map { String($0.dropFirst(start.count)) }
    }

    func qualified(_ name: String) -> String { self.prefix + "." + name }
}

extension Router {
    /// The part of this router under `prefix` (dot-separated, like a method name).
    ///
    /// - Throws: ``IntercomError/Code/invalidName`` if `prefix` is not a valid name.
    public func namespace(_ prefix: String) throws(IntercomError) -> RouterNamespace {
        try Self.validate(prefix)
        return RouterNamespace(router: self, prefix: prefix)
    }
}
