import Foundation
import Intercom
import IntercomTestSupport
import IntercomTesting
import IntercomTestHelper
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// How a test connects to its helper child.
///
/// `socketpair` and `unix` keep the connection on its socket (this side does not
/// offer shared memory); the `sharedMemory…` kinds start the same way and must
/// end up on shared-memory rings, or the spawn fails. `tcp` and `tls` connect the
/// child to a listener on the loopback address (TLS with certificates of the
/// test run's own authority, both sides verified).
enum TransportKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case socketpair
    case unix
    case sharedMemory
    case sharedMemoryOverUnix
    case tcp
    case tls
    var testDescription: String { self.rawValue }
    var isSharedMemory: Bool { self == .sharedMemory || self == .sharedMemoryOverUnix }
}

/// A real `IntercomTestHelper` process connected to this test process.
final class ChildProcess: Sendable {
    let process: Process
    let peer: Peer
    let listener: PeerListener?
    private let exit: WatchedProcess

    var pid: Int32 { self.process.processIdentifier }

    /// Path of the helper executable, next to the test bundle.
    static var helperPath: String {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var directory = exe.deletingLastPathComponent()
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("IntercomTestHelper").path),
            directory.path != "/"
        {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("IntercomTestHelper").path
    }

    static func configuration(_ configure: (inout Peer.Configuration) -> Void = { _ in }) -> Peer.Configuration {
        var configuration = Peer.Configuration(name: "test-parent")
        configuration.remoteErrors.register(HelperError.self)
        configure(&configuration)
        return configuration
    }

    /// Spawns the helper and completes the handshake with it.
    static func spawn(
        _ kind: TransportKind, arguments: [String] = [], router: Router? = nil,
        configuration: Peer.Configuration = ChildProcess.configuration()
    ) async throws -> ChildProcess {
        var configuration = configuration
        configuration.sharedMemory.isEnabled = kind.isSharedMemory
        let child = try await Self.start(kind, arguments: arguments, router: router, configuration: configuration)
        guard child.peer.isSharedMemory == kind.isSharedMemory else {
            await child.shutdown()
            throw IntercomError(.connectionFailed, "the \(kind) connection is \(child.peer.isSharedMemory ? "" : "not ")on shared memory")
        }
        return child
    }

    private static func start(
        _ kind: TransportKind, arguments: [String], router: Router?, configuration: Peer.Configuration
    ) async throws -> ChildProcess {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.helperPath)
        let exit = WatchedProcess(process)
        switch kind {
        case .socketpair, .sharedMemory:
            let sockets = try SocketPair()
            process.arguments = arguments
            process.standardInput = FileHandle(fileDescriptor: sockets.second, closeOnDealloc: false)
            if arguments.contains("--stdio") {
                process.standardOutput = FileHandle(fileDescriptor: sockets.second, closeOnDealloc: false)
            }
            try process.run()
            close(sockets.second)
            let peer = try await Peer.adopt(fileDescriptor: sockets.first, router: router, configuration: configuration)
            return ChildProcess(process: process, peer: peer, listener: nil, exit: exit)
        case .unix, .sharedMemoryOverUnix:
            let path = TemporaryDirectory.shared.socketPath()
            let listener = try await PeerListener.listen(unixPath: path, router: router, configuration: configuration)
            process.arguments = ["--connect", path] + arguments
            process.standardInput = FileHandle.nullDevice
            try process.run()
            var iterator = listener.peers.makeAsyncIterator()
            guard let peer = await iterator.next() else { throw IntercomError(.closed, "listener closed") }
            return ChildProcess(process: process, peer: peer, listener: listener, exit: exit)
        case .tcp, .tls:
            return try await Self.startOverNetwork(
                tls: kind == .tls, process: process, exit: exit, arguments: arguments, router: router, configuration: configuration)
        }
    }

    /// Listens on a loopback port and has the child connect to it; for TLS, the
    /// child's certificate files live only until it connected.
    private static func startOverNetwork(
        tls: Bool, process: Process, exit: WatchedProcess, arguments: [String], router: Router?, configuration: Peer.Configuration
    ) async throws -> ChildProcess {
        var configuration = configuration
        var access = AccessPolicy()
        var childArguments: [String] = []
        let directory = TemporaryDirectory.shared.socketPath() + ".tls"
        if tls {
            configuration.tls = try TestCertificateAuthority.shared.options(commonName: "test-parent")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            let files = try TestCertificateAuthority.shared.writeFiles(commonName: "test-child", into: directory)
            childArguments = ["--tls-cert", files.certificate, "--tls-key", files.key, "--tls-ca", files.ca]
        } else {
            access.allowsUnauthenticated = true
            childArguments = ["--plain-tcp"]
        }
        defer { if tls { try? FileManager.default.removeItem(atPath: directory) } }
        let endpoint: Endpoint = tls ? .tls(host: "127.0.0.1", port: 0) : .tcp(host: "127.0.0.1", port: 0)
        let listener = try await PeerListener.listen(on: endpoint, router: router, configuration: configuration, access: access)
        process.arguments = ["--connect", listener.endpoint.description] + childArguments + arguments
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            await listener.close()
            throw error
        }
        var iterator = listener.peers.makeAsyncIterator()
        guard let peer = await iterator.next() else { throw IntercomError(.closed, "listener closed") }
        return ChildProcess(process: process, peer: peer, listener: listener, exit: exit)
    }

    private init(process: Process, peer: Peer, listener: PeerListener?, exit: WatchedProcess) {
        self.process = process
        self.peer = peer
        self.listener = listener
        self.exit = exit
    }

    /// Waits for the child to exit and returns its status.
    @discardableResult
    func waitForExit() async -> Int32 { await self.exit.waitForExit() }

    func kill(_ signal: Int32 = SIGKILL) { self.exit.kill(signal) }

    /// Closes the connection (the child exits when it ends) and waits for the child.
    func shutdown() async {
        await self.peer.close()
        await self.listener?.close()
        let status = await self.waitForExit()
        _ = status
    }
}

