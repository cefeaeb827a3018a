@_spi(IntercomInternals) public import IntercomTransport
public import IntercomWire
internal import Synchronization

/// Maps dot-namespaced method names (`camera.exposure.set`) to typed handlers.
///
/// One router can serve many connections (every peer a ``PeerListener`` accepts
/// shares its router). Registering a name twice is an error, never a silent
/// replacement; a call to a name with no handler goes to the fallback handler,
/// or, without one, fails at the caller with ``IntercomError/Code/unknownMethod``
/// while the connection stays up.
///
/// ```swift
/// let router = Router()
/// try router.register("camera.exposure.set") { (request: SetExposure, context) in
///     try await camera.setExposure(request.ms)
///     return Ack(ok: true)
/// }
/// ```
public final class Router: Sendable {
    /// A handler with its types erased: decodes the payload, runs, and returns the reply value.
    typealias Handler = @Sendable (IncomingCall) async throws -> (any Encodable & Sendable)?

    private struct State {
        /// The registered routes by method: each handler with its description.
        var routes: [String: Route] = [:]
        var fallback: Handler?
        var properties: [any AnyServiceProperty] = []
        /// Worker counts by namespace prefix (``setWorkers(_:forNamespace:)``).
        var workerPools: [String: WorkerPool] = [:]
    }

    private let state = Locked(State())

    /// Copies of the calls served through this router, for attached monitors (`intercom monitor`).
    package let traffic = TrafficTap()

    /// Creates an empty router.
    public init() {}

    /// Registers a handler that answers calls to `method` with a value.
    ///
    /// - Throws: ``IntercomError`` ``IntercomError/Code/conflict`` if `method` already has a
    ///   handler, ``IntercomError/Code/invalidName`` if it is not a dot-separated name.
    public func register<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        _ method: String,
        _ handler: @escaping @Sendable (Request, CallContext) async throws -> Response
    ) throws(IntercomError) {
        try self.add([Route(method, handler)])
    }

    /// Registers a handler without a result: for one-way messages, or calls whose
    /// caller only waits for completion (the reply is empty).
    ///
    /// - Throws: as ``register(_:_:)-(_,(Request,CallContext)->Response)``.
    public func register<Request: Decodable & Sendable>(
        _ method: String,
        _ handler: @escaping @Sendable (Request, CallContext) async throws -> Void
    ) throws(IntercomError) {
        try self.add([Route(method, handler)])
    }

    /// Sets the handler for methods nobody registered. It receives the raw call and
    /// decides, by ``IncomingCall/method``, what to do; throwing
    /// ``IntercomError/Code/unknownMethod`` is the polite way to refuse.
    ///
    /// - Throws: ``IntercomError/Code/conflict`` if a fallback is already set.
    public func setFallback(
        _ handler: @escaping @Sendable (IncomingCall) async throws -> (any Encodable & Sendable)?
    ) throws(IntercomError) {
        try self.state.withLock { (state: inout State) throws(IntercomError) in
            guard state.fallback == nil else {
                throw IntercomError(.conflict, "a fallback handler is already set on this router")
            }
            state.fallback = handler
        }
    }

    /// Removes the handler for `method`.
    ///
    /// - Returns: whether there was one.
    @discardableResult
    public func unregister(_ method: String) -> Bool {
        self.state.withLock { $0.routes.removeValue(forKey: method) != nil }
    }

    /// The registered method names, sorted.
    public var methods: [String] {
        self.state.withLock { $0.routes.keys.sorted() }
    }

    /// Every registered method with the wire shapes of its argument and result,
    /// derived from their Swift types (``WireSchemas``): what `intercom describe`
    /// prints and ``SchemaCompatibility`` compares. Derived when asked, not at registration.
    public var schema: ServiceSchema {
        let routes = self.state.withLock { $0.routes }
        var schemas = WireSchemas()
        let methods = routes.keys.sorted().map { routes[$0]!.describe(&schemas) }
        return ServiceSchema(methods: methods, types: schemas.types)
    }

    /// The names of the properties declared on this router, sorted.
    public var propertyNames: [String] {
        self.state.withLock { $0.properties.map(\.name).sorted() }
    }

    /// The properties declared on this router (for whoever serves it to publish their changes).
    package var properties: [any AnyServiceProperty] {
        self.state.withLock { $0.properties }
    }

    func addProperty(_ property: any AnyServiceProperty) {
        self.state.withLock { $0.properties.append(property) }
    }

    /// The handler for `method`: its own, else the fallback; run on a worker of
    /// the innermost namespace around `method` that has a worker count.
    func handler(for method: String) -> Handler? {
        let (handler, pool) = self.state.withLock { state -> (Handler?, WorkerPool?) in
            let handler = state.routes[method]?.handler ?? state.fallback
            return (handler, state.workerPools.isEmpty ? nil : Self.innermostPool(around: method, in: state.workerPools))
        }
        guard let handler, let pool else { return handler }
        return { call in try await pool.run { try await handler(call) } }
    }

    /// The pool of the longest prefix of `method` (whole dot-separated segments) that has one.
    private static func innermostPool(around method: String, in pools: [String: WorkerPool]) -> WorkerPool? {
        var name = Substring(method)
        while true {
            if let pool = pools[String(name)] { return pool }
            guard let dot = name.lastIndex(of: ".") else { return nil }
            name = name[..<dot]
        }
    }

    func updateWorkerPools(_ body: (inout [String: WorkerPool]) -> Void) {
        self.state.withLock { body(&$0.workerPools) }
    }

    func workerPool(named prefix: String) -> WorkerPool? {
        self.state.withLock { $0.workerPools[prefix] }
    }

    /// Whether `method` has its own handler (not just the fallback).
    func hasOwnHandler(for method: String) -> Bool {
        self.state.withLock { $0.routes[method] != nil }
    }

    /// Adds `routes` under one lock, all or none.
    func add(_ routes: [Route]) throws(IntercomError) {
        for route in routes { try Self.validate(route.method) }
        let unchanged = routes.count > 1 ? " (nothing of this set was registered)" : ""
        try self.state.withLock { (state: inout State) throws(IntercomError) in
            var seen = Set<String>()
            for route in routes {
                let why =
                    state.routes[route.method] != nil
                    ? "is already registered; unregister it first or pick another name"
                    : !seen.insert(route.method).inserted ? "is listed twice" : nil
                if let why {
                    throw IntercomError(.conflict, "method '\(route.method)' \(why)\(unchanged)", context: .init(method: route.method))
                }
            }
            for route in routes { state.routes[route.method] = route }
        }
    }

    /// Checks that `name` is dot-separated segments of letters, digits, `_` and `-`.
    static func validate(_ name: String) throws(IntercomError) {
        let segments = name.split(separator: ".", omittingEmptySubsequences: false)
        let valid =
            !name.isEmpty && name.utf8.count <= 255
            && segments.allSatisfy { segment in
                !segment.isEmpty
                    && segment.utf8.allSatisfy { byte in
                        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                            || byte == 0x5F || byte == 0x2D
                    }
            }
        guard valid else {
            throw IntercomError(
                .invalidName,
                "'\(name)' is not a valid method name: use dot-separated segments of letters, digits, '_' and '-' (at most 255 bytes), e.g. 'camera.exposure.set'",
                context: .init(method: name))
        }
    }
}
