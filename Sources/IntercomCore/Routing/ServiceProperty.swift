@_spi(IntercomInternals) public import IntercomTransport
internal import Synchronization

/// A property's state as it travels: the value and the version it has (every
/// change adds one), so an observer never takes an older value for a newer one.
public struct PropertyState<Value: Codable & Sendable>: Codable, Sendable {
    /// 1 for the initial value, then one more per change.
    public var version: UInt64
    /// The value.
    public var value: Value

    /// A state as given.
    public init(version: UInt64, value: Value) {
        self.version = version
        self.value = value
    }
}

extension PropertyState: Equatable where Value: Equatable {}

/// The wire names of a property (docs/PROTOCOL.md, "Properties").
public enum PropertyNames {
    /// The method that reads the property `name`.
    public static func get(_ name: String) -> String { "intercom.property.\(name).get" }
    /// The method that asks to change it.
    public static func set(_ name: String) -> String { "intercom.property.\(name).set" }
    /// The topic its changes are published on.
    public static func topic(_ name: String) -> String { "intercom.property.\(name)" }
}

/// A typed value a service exposes to its clients (boss.multiprocess
/// attributes, D-Bus properties): they read it, ask to change it — the service
/// validates and may refuse — and observe it (``Peer/propertyChanges(_:as:)``).
///
/// Declare it on the service's router before serving: every ``PeerListener``
/// serving the router (a ``BusService``'s among them) then publishes each
/// change to its subscribed clients, and a bus service lists the property in
/// its record.
///
/// ```swift
/// let exposure = try router.property("exposure", initial: 10) { ms in
///     guard (1...1000).contains(ms) else { throw IntercomError(.invalidPayload, "exposure must be 1…1000 ms") }
/// }
/// exposure.value = 20   // the service's own change: published to observers
/// ```
public final class ServiceProperty<Value: Codable & Sendable>: Sendable {
    /// The property's name (dot-separated, like a method).
    public let name: String
    private let state: Locked<PropertyState<Value>>
    private let validate: @Sendable (Value) throws -> Void
    /// Whoever publishes its changes (a bus service), attached once it serves.
    private let publishers = Locked<[@Sendable (String, PropertyState<Value>) -> Void]>([])

    init(name: String, initial: Value, validate: @escaping @Sendable (Value) throws -> Void) {
        self.name = name
        self.state = Locked(PropertyState(version: 1, value: initial))
        self.validate = validate
    }

    /// The current value. Setting it (the service's own change, not validated)
    /// publishes it to observers.
    public var value: Value {
        get { self.state.withLock { $0.value } }
        set { self.change(to: newValue) }
    }

    /// The current value with its version.
    public var current: PropertyState<Value> { self.state.withLock { $0 } }

    @discardableResult
    func change(to value: Value) -> PropertyState<Value> {
        let (changed, publishers) = self.state.withLock { state in
            state.version += 1
            state.value = value
            return (state, self.publishers.withLock { $0 })
        }
        // Published under no lock; two changes racing may publish out of order,
        // which is why observers compare versions.
        for publish in publishers { publish(PropertyNames.topic(self.name), changed) }
        return changed
    }

    /// A client asked to change the value: validated first, then changed.
    func requestChange(to value: Value) throws -> PropertyState<Value> {
        try self.validate(value)
        return self.change(to: value)
    }

    /// Adds a publisher of changes.
    func attach(_ publish: @escaping @Sendable (String, PropertyState<Value>) -> Void) {
        self.publishers.withLock { $0.append(publish) }
    }
}

/// What a router knows of a property without its type: enough to attach a publisher.
package protocol AnyServiceProperty: Sendable {
    var name: String { get }
    /// Publishes every change with `publish(topic, encodable state)`.
    func attachPublisher(_ publish: @escaping @Sendable (String, any Encodable & Sendable) -> Void)
}

extension ServiceProperty: AnyServiceProperty {
    package func attachPublisher(_ publish: @escaping @Sendable (String, any Encodable & Sendable) -> Void) {
        self.attach { topic, state in publish(topic, state) }
    }
}

extension Router {
    /// Declares the property `name` with its initial value: registers the
    /// methods that read it and ask to change it (``PropertyNames``).
    ///
    /// - Parameter validate: judges a client's new value; throw to refuse it
    ///   (the client gets the error — an ``IntercomError`` keeps its code). The
    ///   default accepts every value.
    /// - Throws: ``IntercomError`` `conflict` if the property (or its methods)
    ///   exists, `invalidName` if `name` is not a dot-separated name.
    @discardableResult
    public func property<Value: Codable & Sendable>(
        _ name: String, initial: Value, validate: @escaping @Sendable (Value) throws -> Void = { _ in }
    ) throws(IntercomError) -> ServiceProperty<Value> {
        let property = ServiceProperty(name: name, initial: initial, validate: validate)
        try self.add([
            Route(PropertyNames.get(name)) { (_: Int, _: CallContext) -> PropertyState<Value> in property.current },
            Route(PropertyNames.set(name)) { (value: Value, _: CallContext) -> PropertyState<Value> in
                try property.requestChange(to: value)
            },
        ])
        self.addProperty(property)
        return property
    }
}
