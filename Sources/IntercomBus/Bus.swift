public import IntercomTransport
public import IntercomCore
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
internal import IntercomWire
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Named services on one host, with no daemon: a bus is a private directory
/// where each service has a socket, a lock held for its whole life, and a small
/// JSON record (see DESIGN.md, "The bus on a host").
///
/// ```swift
/// let bus = try Bus()                                   // the default bus
/// let service = try await bus.serve("camera", router: router)
/// // elsewhere:
/// let camera = try await bus.connect(to: "camera")
/// let info = try await bus.waitForService("camera", timeout: .seconds(5))
/// ```
public struct Bus: Sendable {
    /// The bus directory.
    public let directory: String
    /// How to start services that are not running when asked for, by name
    /// (``ServiceActivation``): ``connect(to:router:configuration:)``, its
    /// waiting form and ``ServiceHandle``s made from this value start them.
    public var activations: [String: ServiceActivation] = [:]

    /// The bus named `name` (default `default`), in `$INTERCOM_BUS_DIR`, else
    /// `$XDG_RUNTIME_DIR/intercom/<name>`, else `/tmp/intercom-<uid>/<name>`.
    ///
    /// - Throws: ``IntercomError/Code/invalidName`` for a name with a `/`.
    public init(_ name: String = "default") throws(IntercomError) {
        self.directory = try BusDirectory.resolve(bus: name)
    }

    /// The bus in an explicit directory.
    public init(directory: String) {
        self.directory = directory
    }

    /// Opens the directory, creating it 0700 if needed, and checks it is private.
    func open() throws(IntercomError) -> BusDirectory {
        try BusDirectory(path: self.directory)
    }

    // MARK: Serving

    /// Serves `router` under `name` until the returned service is closed or its
    /// process ends.
    ///
    /// Adds three built-in methods: `intercom.info` (returns the ``ServiceInfo``),
    /// `intercom.describe` (returns the router's ``ServiceSchema``, what
    /// `intercom describe` prints) and `intercom.quit` (the service stops serving;
    /// see ``BusService/waitForQuit()``).
    ///
    /// - Parameters:
    ///   - replace: if another live process serves `name`, ask it to quit and take
    ///     the name once it has let go (within `replaceTimeout`).
    ///   - access: who may connect (default: processes of this user only), checked
    ///     with the kernel's peer credentials before any handler runs.
    ///   - addresses: network endpoints (`tls://0.0.0.0:7411`) to serve on as well,
    ///     with `configuration`'s TLS settings: the service is then reached by
    ///     name on this host and by address from others (``BusService/addresses``).
    ///   - networkAccess: who may connect over those addresses (by default any
    ///     client whose certificate the trust roots verify).
    /// - Throws: ``IntercomError`` `nameInUse` (a live process serves `name`),
    ///   `permissionDenied` (unsafe directory, or a symlink or foreign file where a
    ///   bus file goes — never followed or deleted), `invalidName`, `conflict` (the
    ///   router already has a handler under `intercom.`).
    public func serve(
        _ name: String,
        router: Router = Router(),
        replace: Bool = false,
        replaceTimeout: Duration = .seconds(10),
        configuration: Peer.Configuration? = nil,
        access: BusAccess = .sameUser,
        addresses: [Endpoint] = [],
        networkAccess: AccessPolicy = AccessPolicy()
    ) async throws(IntercomError) -> BusService {
        let directory = try self.open()
        try directory.checkServiceName(name)
        let lock = try await self.claim(name, in: directory, replace: replace, timeout: replaceTimeout)
        do {
            try Self.removeLeftoverSocket(directory.socketPath(name))
            return try await BusService.start(
                name: name, bus: self, directory: directory, lock: lock, router: router,
                configuration: configuration ?? Peer.Configuration(name: name), allowedUIDs: access.allowedUIDs,
                addresses: addresses, networkAccess: networkAccess)
        } catch {
            lock.release()
            throw error
        }
    }

    /// Takes the name's lock, asking a live holder to quit first if `replace`.
    private func claim(_ name: String, in directory: BusDirectory, replace: Bool, timeout: Duration)
        async throws(IntercomError) -> NameLock
    {
        let path = directory.lockPath(name)
        let deadline = ContinuousClock.now + timeout
        // Someone who lists or waits for services takes a free lock for a moment to
        // clean up after a dead holder (then removes the lock file). Give such a
        // brief holder time to let go before calling the name taken.
        let graceEnd = ContinuousClock.now + .milliseconds(250)
        let watcher = DirectoryWatcher(path: directory.base)
        var askedToQuit = false
        while true {
            switch try NameLock.tryAcquire(path, create: true) {
            case .acquired(let lock)?:
                return lock
            case .held?, nil:
                if !replace, case let grace = graceEnd - .now, grace > .zero, self.readRecord(name, in: directory) == nil {
                    await watcher.waitForChange(upTo: grace)
                    continue
                }
                guard replace else {
                    let holder = self.readRecord(name, in: directory).map { " (pid \($0.pid))" } ?? ""
                    throw IntercomError(.nameInUse, "service '\(name)' is already served on this bus\(holder)")
                }
                if !askedToQuit {
                    askedToQuit = true
                    await self.askToQuit(name, in: directory)
                }
                let remaining = deadline - .now
                guard remaining > .zero else {
                    throw IntercomError(.nameInUse, "service '\(name)' did not let go of its name within \(timeout)")
                }
                await watcher.waitForChange(upTo: remaining)
            }
        }
    }

    private func askToQuit(_ name: String, in directory: BusDirectory) async {
        guard let peer = try? await Peer.connect(unixPath: directory.socketPath(name)) else { return }
        _ = try? await peer.call("intercom.quit", 0, returning: Bool.self, timeout: .seconds(5))
        await peer.close()
    }

    /// With the name's lock held, nobody serves the name: a socket file at its path
    /// is a dead holder's leftover. Anything else there is refused, not deleted.
    private static func removeLeftoverSocket(_ path: String) throws(IntercomError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == getuid() else {
            let what = info.st_mode & S_IFMT == S_IFLNK ? "a symbolic link" : "not a socket of this user"
            throw IntercomError(.permissionDenied, "\(path) is \(what); refusing to replace it")
        }
        unlink(path)
    }

    // MARK: Finding services

    /// The live services on the bus, sorted by name. Leftovers of dead services
    /// (their lock is free) are removed on the way.
    ///
    /// - Throws: ``IntercomError/Code/permissionDenied`` if the directory is unsafe.
    public func services() throws(IntercomError) -> [ServiceInfo] {
        var info = stat()
        guard lstat(self.directory, &info) == 0 else { return [] }
        let directory = try BusDirectory(path: self.directory, create: false)
        var names = Set(directory.lockedNames())
        let records = directory.entries()
        names.formUnion(records.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.map { String($0.dropLast(5)) })
        let live = names.sorted().compactMap { self.liveRecord($0, in: directory) }
        self.removeExpiredSuspensions(among: records, except: Set(live.map(\.name)), in: directory)
        return live
    }

    /// Removes the suspensions whose time passed with nobody back — under the
    /// name's lock, so that a suspension being written meanwhile is not lost.
    private func removeExpiredSuspensions(among entries: [String], except live: Set<String>, in directory: BusDirectory) {
        for entry in entries where entry.hasSuffix(".suspended") && !entry.hasPrefix(".") {
            let name = String(entry.dropLast(".suspended".count))
            guard !live.contains(name), (try? directory.checkServiceName(name)) != nil,
                ServiceSuspension.read(name, in: directory) == nil,
                case .acquired(let lock)? = try? NameLock.tryAcquire(directory.lockPath(name), create: true)
            else { continue }
            if ServiceSuspension.read(name, in: directory) == nil { ServiceSuspension.remove(name, in: directory) }
            lock.release()
        }
    }

    /// The record of `name` if a live process serves it and is ready; cleans up
    /// after a dead one.
    func liveRecord(_ name: String, in directory: BusDirectory) -> ServiceInfo? {
        let lockPath = directory.lockPath(name)
        switch try? NameLock.tryAcquire(lockPath, create: false) {
        case .held?:
            return self.readRecord(name, in: directory)
        case .acquired(let lock)?:
            // Nobody holds the lock a service held for its whole life: it is gone,
            // provably. Remove what it left behind (only files of this user's of
            // the kinds the bus writes; anything else stays).
            directory.removeOwnedFile(directory.recordPath(name))
            try? Self.removeLeftoverSocket(directory.socketPath(name))
            lock.release()
            return nil
        case nil:
            // No lock file: nothing proves a service wrote what is there (a user's
            // own `settings.json`, say). It is not a service, and it stays.
            return nil
        }
    }

    private func readRecord(_ name: String, in directory: BusDirectory) -> ServiceInfo? {
        let path = directory.recordPath(name)
        let fd = POSIX.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { POSIX.close(fd) }
        guard let data = POSIX.readAll(fd, limit: 1 << 20) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(ServiceInfo.self, from: Data(data))
    }

    /// The live service `name`, or nil.
    public func service(named name: String) throws(IntercomError) -> ServiceInfo? {
        var info = stat()
        guard lstat(self.directory, &info) == 0 else { return nil }
        let directory = try BusDirectory(path: self.directory, create: false)
        return self.liveRecord(name, in: directory)
    }

    /// Waits until `name` is served and ready, and returns its record. Returns at
    /// once if it already is; otherwise wakes on directory changes (inotify on
    /// Linux, polling elsewhere).
    ///
    /// - Throws: ``IntercomError/Code/timeout`` if it does not come up in time,
    ///   `cancelled` if the task is cancelled, `permissionDenied` for an unsafe directory.
    public func waitForService(_ name: String, timeout: Duration) async throws(IntercomError) -> ServiceInfo {
        let directory = try self.open()
        let deadline = ContinuousClock.now + timeout
        let watcher = DirectoryWatcher(path: directory.base)
        while true {
            if let info = self.liveRecord(name, in: directory) { return info }
            let remaining = deadline - .now
            guard remaining > .zero else {
                throw IntercomError(.timeout, "service '\(name)' did not come up on bus \(self.directory) within \(timeout)")
            }
            if Task.isCancelled { throw IntercomError(.cancelled, "stopped waiting for service '\(name)'") }
            await watcher.waitForChange(upTo: remaining)
        }
    }

    /// Connects to the live service `name` — started first, and waited for, if it
    /// is absent and has an activation (``activations``).
    ///
    /// - Throws: ``IntercomError/Code/serviceNotFound`` (naming the services that
    ///   are live) if nobody serves it; `permissionDenied` if it refuses this user.
    public func connect(
        to name: String, router: Router? = nil, configuration: Peer.Configuration = Peer.Configuration()
    ) async throws(IntercomError) -> Peer {
        var info = stat()
        guard lstat(self.directory, &info) == 0 else {
            throw IntercomError(.serviceNotFound, "no service '\(name)' on bus \(self.directory) (the bus directory does not exist)")
        }
        // The socket is reached through the directory checked here (its open
        // descriptor), so the path cannot be swapped in between.
        let directory = try BusDirectory(path: self.directory, create: false)
        try directory.checkServiceName(name)
        if self.shouldActivate(name, in: directory) { try await self.activate(name) }
        guard self.liveRecord(name, in: directory) != nil else {
            if let suspension = ServiceSuspension.read(name, in: directory) {
                throw IntercomError(
                    .serviceNotFound,
                    "service '\(name)' on bus \(self.directory) is suspended (pid \(suspension.pid) restarting on purpose, back by \(suspension.until)); connect with a timeout or through a ServiceHandle to wait for it")
            }
            let live = (try? self.services().map(\.name)) ?? []
            throw IntercomError(
                .serviceNotFound,
                "no service '\(name)' on bus \(self.directory)"
                    + (live.isEmpty ? " (no services are running)" : "; running: \(live.joined(separator: ", "))"))
        }
        do {
            return try await Peer.connect(unixPath: directory.socketPath(name), router: router, configuration: configuration)
        } catch {
            var error = error
            error.message = "service '\(name)' on bus \(self.directory): " + error.message
            throw error
        }
    }

    /// Waits for `name` to come up (up to `timeout`), then connects to it.
    ///
    /// Every wait in Intercom is spelled `timeout:`.
    public func connect(
        to name: String, timeout: Duration, router: Router? = nil,
        configuration: Peer.Configuration = Peer.Configuration()
    ) async throws(IntercomError) -> Peer {
        if self.activations[name] != nil, (try? self.service(named: name)) == nil {
            try await self.activate(name, timeout: timeout)
        } else {
            _ = try await self.waitForService(name, timeout: timeout)
        }
        return try await self.connect(to: name, router: router, configuration: configuration)
    }

    /// Renamed ``connect(to:timeout:router:configuration:)``.
    @available(*, deprecated, renamed: "connect(to:timeout:router:configuration:)")
    public func connect(
        to name: String, waitingUpTo timeout: Duration, router: Router? = nil,
        configuration: Peer.Configuration = Peer.Configuration()
    ) async throws(IntercomError) -> Peer {
        try await self.connect(to: name, timeout: timeout, router: router, configuration: configuration)
    }
}

/// Who may connect to a service on a bus. (A struct, not an enum: group- and
/// certificate-based rules will come without breaking a user's `switch`.)
public struct BusAccess: Sendable, Hashable {
    private enum Rule: Hashable {
        case sameUser
        case users(Set<UInt32>)
        case anyone
    }
    private let rule: Rule

    /// Processes running as the same user as the service (the default).
    public static let sameUser = BusAccess(rule: .sameUser)
    /// Processes running as one of these user ids.
    public static func users(_ uids: Set<UInt32>) -> BusAccess { BusAccess(rule: .users(uids)) }
    /// Anyone who can reach the socket (the bus directory is still 0700).
    public static let anyone = BusAccess(rule: .anyone)

    var allowedUIDs: Set<UInt32>? {
        switch self.rule {
        case .sameUser: [UInt32(getuid())]
        case .users(let uids): uids
        case .anyone: nil
        }
    }
}
