public import IntercomTransport

/// A service appearing on the bus or leaving it.
public enum ServiceChange: Sendable, Hashable {
    /// A process started serving a name (and is ready).
    case appeared(ServiceInfo)
    /// The process serving a name is gone (it quit, crashed, or was replaced:
    /// a replacement shows as this, then `appeared` with the new pid).
    case disappeared(ServiceInfo)
}

extension Bus {
    /// The services appearing and leaving, as it happens (D-Bus's
    /// NameOwnerChanged): first every live service as `appeared`, then each
    /// change. Woken by the directory's changes; a crashed service, which
    /// changes nothing in the directory, is noticed within 100 ms.
    ///
    /// ```swift
    /// for try await change in bus.serviceChanges() {
    ///     if case .disappeared(let service) = change { print(service.name, "left") }
    /// }
    /// ```
    ///
    /// The looking is done by the iteration itself (no task runs in the
    /// background): it ends when the iterating task is cancelled, and throws
    /// ``IntercomError`` if the bus directory cannot be used (`permissionDenied`
    /// for an unsafe one, naming what is wrong and what to do). A missing one is
    /// made, as for ``waitForService(_:timeout:)``.
    public func serviceChanges() -> ServiceChanges {
        ServiceChanges(bus: self)
    }
}

/// The sequence of ``Bus/serviceChanges()``.
public struct ServiceChanges: AsyncSequence, Sendable {
    /// A change.
    public typealias Element = ServiceChange
    /// Why the sequence stopped early.
    public typealias Failure = IntercomError

    let bus: Bus

    /// Looks at the bus whenever its directory changes, and reports the difference.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let bus: Bus
        var watcher: DirectoryWatcher?
        var known: [String: ServiceInfo] = [:]
        var ready: [ServiceChange] = []

        /// The next change; nil once the iterating task is cancelled.
        ///
        /// - Throws: ``IntercomError`` if the bus directory cannot be read.
        public mutating func next() async throws(IntercomError) -> ServiceChange? {
            if self.watcher == nil {
                // Watching starts before the first look, so no change falls between.
                // The directory is open only while the watch is added.
                let directory = try self.bus.open()
                self.watcher = withExtendedLifetime(directory) { DirectoryWatcher(path: directory.base) }
            }
            while self.ready.isEmpty {
                if Task.isCancelled { return nil }
                self.compare(try self.bus.services())
                if self.ready.isEmpty { await self.watcher?.waitForChange(upTo: .milliseconds(100)) }
            }
            return self.ready.removeFirst()
        }

        private mutating func compare(_ now: [ServiceInfo]) {
            let current = Dictionary(now.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            for (name, old) in self.known.sorted(by: { $0.key < $1.key }) where current[name]?.pid != old.pid {
                self.ready.append(.disappeared(old))
            }
            for service in now where self.known[service.name]?.pid != service.pid {
                self.ready.append(.appeared(service))
            }
            self.known = current
        }
    }

    /// An iterator; each looks at the bus on its own.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(bus: self.bus) }
}
