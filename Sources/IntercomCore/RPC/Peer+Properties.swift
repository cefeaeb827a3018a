// (No imports: everything used here is declared in this module.)

// Properties: reading, changing and observing the other side's declared values.
extension Peer {
    /// Reads the other side's property `name` (declared with ``Router/property(_:initial:validate:)``).
    ///
    /// - Throws: as ``call(_:_:returning:timeout:)``; `unknownMethod` if there is no such property.
    public func property<Value: Codable & Sendable>(
        _ name: String, as type: Value.Type = Value.self, timeout: Duration? = nil
    ) async throws -> Value {
        try await self.call(PropertyNames.get(name), 0, returning: PropertyState<Value>.self, timeout: timeout).value
    }

    /// Asks the other side to change its property `name` to `value`; it
    /// validates the value and may refuse (its error is thrown here).
    ///
    /// - Returns: the value now set.
    @discardableResult
    public func setProperty<Value: Codable & Sendable>(
        _ name: String, to value: Value, timeout: Duration? = nil
    ) async throws -> Value {
        try await self.call(PropertyNames.set(name), value, returning: PropertyState<Value>.self, timeout: timeout).value
    }

    /// The values of the other side's property `name`: the current one first,
    /// then each change. An observer that falls behind gets the latest value
    /// next, never a queue of stale ones (one value is held at most), and never
    /// an older value after a newer one.
    ///
    /// ```swift
    /// for try await exposure in camera.propertyChanges("exposure", as: Int.self) { show(exposure) }
    /// ```
    ///
    /// The sequence ends with the connection (throwing its error). `Value` must
    /// be the property's own type: the binary codec is not self-describing, so
    /// `JSONValue` cannot stand in for it (tools watch through ``jsonEvents(_:bufferSize:)``
    /// and ``callJSON(_:json:timeout:)`` instead, as `intercom watch --property` does).
    public func propertyChanges<Value: Codable & Sendable>(
        _ name: String, as type: Value.Type = Value.self
    ) -> PropertyChanges<Value> {
        PropertyChanges(peer: self, name: name)
    }
}

/// The current value of a property, then its changes, coalesced to the latest
/// (see ``Peer/propertyChanges(_:as:)``).
public struct PropertyChanges<Value: Codable & Sendable>: AsyncSequence, Sendable {
    /// The values.
    public typealias Element = Value
    let peer: Peer
    let name: String

    /// Yields the current value, then each newer one.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let peer: Peer
        let name: String
        /// Subscribed before the current value is read, so no change falls between.
        var events: EventSubscription<PropertyState<Value>>.AsyncIterator
        var version: UInt64?

        /// The next value.
        public mutating func next() async throws -> Value? {
            if self.version == nil {
                let current = try await self.peer.call(
                    PropertyNames.get(self.name), 0, returning: PropertyState<Value>.self)
                self.version = current.version
                return current.value
            }
            while let delivery = try await self.events.next() {
                guard case .event(let state) = delivery, state.version > self.version ?? 0 else { continue }
                self.version = state.version
                return state.value
            }
            return nil
        }
    }

    /// Subscribes to the changes and starts the sequence.
    public func makeAsyncIterator() -> AsyncIterator {
        // A queue of one, dropping the oldest: a slow observer is coalesced to the latest.
        let subscription = self.peer.events(
            PropertyNames.topic(self.name), as: PropertyState<Value>.self, bufferSize: 1, overflow: .dropOldest)
        return AsyncIterator(
            peer: self.peer, name: self.name, events: subscription.makeAsyncIterator())
    }
}
