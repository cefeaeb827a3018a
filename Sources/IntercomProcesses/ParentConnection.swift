public import IntercomTransport
public import IntercomCore
internal import IntercomBus
internal import CIntercomShims
#if canImport(FoundationEssentials)
internal import FoundationEssentials
#else
internal import Foundation
#endif
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// The environment a spawned worker finds its parent connection through.
enum WorkerEnvironment {
    /// The inherited descriptor of the connected socket (the child's end of the pair).
    static let parentDescriptor = "INTERCOM_PARENT_FD"
    /// The parent's pid: a child that finds another parent was orphaned before it could notice.
    static let parentPID = "INTERCOM_PARENT_PID"
    /// The role the worker was started in (``WorkerSpec/currentExecutable(role:arguments:)``).
    static let role = "INTERCOM_ROLE"
}

extension Peer {
    /// The role this process was spawned in by ``Worker/spawn(_:router:configuration:)``, or nil
    /// if no Intercom parent started it.
    public static var workerRole: String? {
        ProcessInfo.processInfo.environment[WorkerEnvironment.role]
    }

    /// Whether an Intercom parent spawned this process (a parent connection is waiting).
    public static var hasParent: Bool {
        ProcessInfo.processInfo.environment[WorkerEnvironment.parentDescriptor] != nil
    }

    /// In a worker spawned by ``Worker/spawn(_:router:configuration:)``: the
    /// connection to the parent, already connected. Also makes this process die
    /// with its parent (`PR_SET_PDEATHSIG` on Linux), including when the parent
    /// died before this process could ask for that.
    ///
    /// - Throws: ``IntercomError/Code/connectionFailed`` if this process was not
    ///   spawned that way.
    public static func parent(router: Router? = nil, configuration: Configuration = Configuration())
        async throws(IntercomError) -> Peer
    {
        let environment = ProcessInfo.processInfo.environment
        guard let text = environment[WorkerEnvironment.parentDescriptor], let fd = Int32(text) else {
            throw IntercomError(
                .connectionFailed, "this process has no parent connection (\(WorkerEnvironment.parentDescriptor) is not set)")
        }
        dieWithParent(expectedParent: environment[WorkerEnvironment.parentPID].flatMap { Int32($0) })
        return try await Peer.adopt(fileDescriptor: fd, router: router, configuration: configuration)
    }
}

/// Asks the kernel to kill this process when its parent dies, then checks the
/// parent is still the one that spawned it: if the parent died first, the
/// request came too late, so exit now.
func dieWithParent(expectedParent: Int32?) {
    // The spawning thread lives as long as the worker's owner needs it: Subprocess
    // spawns from its own long-lived thread, so "parent thread exits" (what the
    // kernel watches) means the parent process ends.
    _ = c_intercom_set_parent_death_signal(SIGKILL)
    if let expectedParent, getppid() != expectedParent {
        exit(70)
    }
}
