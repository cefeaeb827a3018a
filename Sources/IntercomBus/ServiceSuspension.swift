@_spi(IntercomInternals) public import IntercomTransport
internal import IntercomCore
#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// A service's word that it restarts on purpose and comes back (IPC::Manager's
/// suspend): the `<name>.suspended` file the bus writes while the name is
/// between two instances. See ``BusService/suspend(backWithin:drainTimeout:)``.
///
/// While it stands, a ``ServiceHandle`` waits for the next instance (within the
/// call's deadline) instead of failing, fail-fast handles included. It is
/// removed by the instance that comes back, and ignored once `until` passed.
public struct ServiceSuspension: Codable, Sendable, Hashable {
    /// The process that suspended.
    public var pid: Int32
    /// When it said it would be back by; after that the name counts as simply absent.
    public var until: Date

    /// Creates a suspension record.
    public init(pid: Int32, until: Date) {
        self.pid = pid
        self.until = until
    }

    static func path(_ name: String, in directory: BusDirectory) -> String { "\(directory.base)/\(name).suspended" }

    func write(_ name: String, in directory: BusDirectory) throws(IntercomError) {
        try BusService.writeJSON(self, to: Self.path(name, in: directory), temporary: "\(directory.base)/.\(name).suspended.\(getpid())")
    }

    /// The record for `name`, if there is one and it has not expired.
    static func read(_ name: String, in directory: BusDirectory, now: Date = Date()) -> ServiceSuspension? {
        let fd = POSIX.open(Self.path(name, in: directory), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { POSIX.close(fd) }
        guard let data = POSIX.readAll(fd, limit: 4096) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        guard let record = try? decoder.decode(ServiceSuspension.self, from: Data(data)), record.until > now else { return nil }
        return record
    }

    /// Removes the record of `name` — only a regular file of this user, the
    /// kind the bus writes. Called with the name's lock held, so no suspension
    /// can be written meanwhile.
    static func remove(_ name: String, in directory: BusDirectory) {
        directory.removeOwnedFile(Self.path(name, in: directory))
    }
}

extension Bus {
    /// The suspension of `name`, if its last instance suspended to restart and
    /// the next one is not up yet (and the time it gave has not passed).
    public func suspension(of name: String) -> ServiceSuspension? {
        guard let directory = try? BusDirectory(path: self.directory, create: false) else { return nil }
        defer { directory.closeDescriptor() }
        return ServiceSuspension.read(name, in: directory)
    }
}

extension BusService {
    /// Suspends the service to restart it on purpose, keeping its callers'
    /// requests (IPC::Manager's suspend): calls made from now on wait for the
    /// next instance, within their deadlines, and reach it instead of failing.
    ///
    /// In order: the bus records the suspension (`<name>.suspended`), the
    /// service leaves the directory and stops accepting connections, and every
    /// client is told. A client (of this library) then makes no more calls on
    /// its connection — its `ServiceHandle` holds them for the next instance —
    /// and closes the connection once every call it already made is answered,
    /// so nothing sent to this instance is lost. Clients that cannot (another
    /// implementation of the protocol) are closed after `drainTimeout`, as are
    /// those still busy then. Finally the service closes and gives up its name,
    /// for the next instance to take; that instance removes the suspension.
    ///
    /// ```swift
    /// try await service.suspend(backWithin: .seconds(30))
    /// execv(newBinary, arguments)   // or exit and let the supervisor restart it
    /// ```
    ///
    /// - Parameters:
    ///   - backWithin: how long callers should wait for the next instance; after
    ///     that the name counts as absent.
    ///   - drainTimeout: how long the clients have to finish their calls.
    /// - Throws: ``IntercomError/Code/closed`` if the service is already closed or
    ///   suspending; `permissionDenied` if the suspension cannot be written.
    public func suspend(backWithin: Duration = .seconds(30), drainTimeout: Duration = .seconds(10)) async throws(IntercomError) {
        let first = self.state.withLock { state -> Bool in
            guard !state.closed, !state.suspending else { return false }
            state.suspending = true
            return true
        }
        guard first else { throw IntercomError(.closed, "service '\(self.name)' is already closed or suspending") }
        let seconds = Double(backWithin.components.seconds) + Double(backWithin.components.attoseconds) / 1e18
        try ServiceSuspension(pid: getpid(), until: Date().addingTimeInterval(seconds)).write(self.name, in: self.directory)
        unlink(self.recordPath)
        await self.listener.stopAccepting()
        for listener in self.networkListeners { await listener.stopAccepting() }
        let clients = self.connectedClients
        let closingThemselves = clients.filter { $0.announceSuspension() }
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for client in closingThemselves { await client.waitUntilClosed() }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: drainTimeout)
                return false
            }
            let drained = await group.next() ?? false
            group.cancelAll()
            if !drained {
                // The rest are closed below; that also ends the first task.
                for client in closingThemselves { await client.close() }
            }
        }
        await self.close()
    }
}
