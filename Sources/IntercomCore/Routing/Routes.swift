public import IntercomTransport
internal import IntercomWire

/// One handler with its method name, as a value: the unit of
/// ``Router/register(_:)-(RouteSet)`` (magscope's bulk registration).
public struct Route: Sendable {
    let method: String
    let handler: Router.Handler
    /// The method's wire shapes, derived from its types when asked (``Router/schema``).
    var describe: @Sendable (inout WireSchemas) -> MethodSchema

    /// A handler that answers calls to `method` with a value.
    public init<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        _ method: String, _ handler: @escaping @Sendable (Request, CallContext) async throws -> Response
    ) {
        self.method = method
        self.handler = { call in
            let request: Request = try call.decode()
            return try await handler(request, call.context)
        }
        self.describe = { schemas in
            MethodSchema(name: method, argument: schemas.shape(of: Request.self), result: schemas.shape(ofEncodable: Response.self))
        }
    }

    /// A handler without a result (one-way messages, calls that only complete).
    public init<Request: Decodable & Sendable>(
        _ method: String, _ handler: @escaping @Sendable (Request, CallContext) async throws -> Void
    ) {
        self.method = method
        self.handler = { call in
            let request: Request = try call.decode()
            try await handler(request, call.context)
            return nil
        }
        self.describe = { schemas in
            MethodSchema(name: method, argument: schemas.shape(of: Request.self), result: .primitive(.none))
        }
    }

    /// This route described as a stream method: `kind`, with the shapes of its streamed items.
    func streaming(
        _ kind: MethodSchema.Kind, item: (@Sendable (inout WireSchemas) -> WireShape)? = nil,
        input: (@Sendable (inout WireSchemas) -> WireShape)? = nil
    ) -> Route {
        var route = self
        let describe = self.describe
        route.describe = { schemas in
            var method = describe(&schemas)
            method.kind = kind
            method.item = item?(&schemas)
            method.input = input?(&schemas)
            return method
        }
        return route
    }
}

/// Collects ``Route``s written one per line.
@resultBuilder
public enum RoutesBuilder {
    /// One route.
    public static func buildExpression(_ route: Route) -> [Route] { [route] }
    /// Several routes (another set's, a loop's).
    public static func buildExpression(_ routes: [Route]) -> [Route] { routes }
    /// The routes of a block, in order.
    public static func buildBlock(_ parts: [Route]...) -> [Route] { parts.flatMap { $0 } }
    /// An `if` without `else`.
    public static func buildOptional(_ part: [Route]?) -> [Route] { part ?? [] }
    /// The first branch of an `if`/`else`.
    public static func buildEither(first part: [Route]) -> [Route] { part }
    /// The second branch of an `if`/`else`.
    public static func buildEither(second part: [Route]) -> [Route] { part }
    /// A `for` loop's routes.
    public static func buildArray(_ parts: [[Route]]) -> [Route] { parts.flatMap { $0 } }
}

/// Something that serves a set of methods — a camera, a store — and says
/// which, so it registers all of its handlers in one step.
///
/// ```swift
/// final class Camera: RouteSet {
///     var routes: [Route] {
///         Route("camera.exposure.set") { (request: SetExposure, _) in self.set(request) }
///         Route("camera.snapshot") { (_: Int, _) in self.snapshot() }
///     }
/// }
/// try router.register(camera)
/// ```
public protocol RouteSet: Sendable {
    /// The routes to register.
    @RoutesBuilder var routes: [Route] { get }
}

extension Router {
    /// Registers every route of `set`, all or none: if one name is invalid,
    /// repeated, or already registered, nothing is registered.
    ///
    /// - Throws: ``IntercomError/Code/invalidName`` or ``IntercomError/Code/conflict``
    ///   naming the first offending method.
    public func register(_ set: some RouteSet) throws(IntercomError) {
        try self.add(set.routes)
    }

    /// Registers the routes the closure lists, all or none.
    ///
    /// ```swift
    /// try router.register {
    ///     Route("math.add") { (request: AddRequest, _) in request.a + request.b }
    ///     Route("math.negate") { (value: Int, _) in -value }
    /// }
    /// ```
    ///
    /// - Throws: as ``register(_:)-(RouteSet)``.
    public func register(@RoutesBuilder _ routes: () -> [Route]) throws(IntercomError) {
        try self.add(routes())
    }
}
