internal import Synchronization

/// A value set once, which tasks can wait for: lets handlers registered before
/// a service exists reach it without a window where it is still missing.
package final class SetOnce<Value: Sendable>: Sendable {
    private let state = Locked<(value: Value?, waiters: [UnsafeContinuation<Value, Never>])>((nil, []))

    package init() {}

    /// Sets the value (the first call wins) and wakes every waiter.
    package func set(_ value: Value) {
        let waiters = self.state.withLock { state -> [UnsafeContinuation<Value, Never>] in
            guard state.value == nil else { return [] }
            state.value = value
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: value) }
    }

    /// The value, if set.
    package var current: Value? { self.state.withLock { $0.value } }

    /// The value, waiting until it is set.
    package var value: Value {
        get async {
            await withUnsafeContinuation { continuation in
                let value = self.state.withLock { state -> Value? in
                    if let value = state.value { return value }
                    state.waiters.append(continuation)
                    return nil
                }
                if let value { continuation.resume(returning: value) }
            }
        }
    }
}

/// A weak reference that can cross tasks: what a handler registered on a
/// router keeps of the service that owns the router (a strong one would be a
/// cycle: service → listener → router → handler → service).
package struct WeakReference<Object: AnyObject & Sendable>: @unchecked Sendable {
    // @unchecked: a weak reference to a Sendable object; read and written whole.
    package weak var object: Object?

    package init(_ object: Object?) {
        self.object = object
    }
}
