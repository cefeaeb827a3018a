// Types shared by the test helper process and the tests that drive it.
public import Intercom
public import Synchronization
public import NIOCore
#if canImport(Glibc)
internal import Glibc
@_spi(IntercomInternals) internal import IntercomTransport
#endif

/// The request of the example call.
public struct SetExposure: Codable, Sendable, Equatable {
    public var ms: Int
    public init(ms: Int) { self.ms = ms }
}

/// The reply of the example call.
public struct Ack: Codable, Sendable, Equatable {
    public var ok: Bool
    public var appliedMs: Int
    public init(ok: Bool, appliedMs: Int) {
        self.ok = ok
        self.appliedMs = appliedMs
    }
}

/// Two numbers to add.
public struct AddRequest: Codable, Sendable {
    public var a: Int
    public var b: Int
    public init(a: Int, b: Int) {
        self.a = a
        self.b = b
    }
}

/// A Codable error both sides know: it crosses the connection as itself.
public enum HelperError: Error, Codable, Sendable, Equatable {
    case refused(reason: String, code: Int)
}

/// A one-way note for the message-channel tests.
public struct Note: Codable, Sendable, Equatable {
    public var index: Int
    public var text: String
    public init(index: Int, text: String) {
        self.index = index
        self.text = text
    }
}

/// What a handler saw when its call was cancelled.
public struct CancelReport: Codable, Sendable, Equatable {
    public var callID: UInt64
    /// The budget the handler was given (from the frame), in milliseconds.
    public var budgetMs: Int
    public init(callID: UInt64, budgetMs: Int) {
        self.callID = callID
        self.budgetMs = budgetMs
    }
}

/// Asks a serving helper to publish `count` events (0, 1, 2, …) on `topic`.
public struct Burst: Codable, Sendable {
    public var topic: String
    public var count: Int
    public init(topic: String, count: Int) {
        self.topic = topic
        self.count = count
    }
}

/// What a burst did: per subscriber, events sent and events dropped because the
/// subscriber's connection was full.
public struct BurstTally: Codable, Sendable, Equatable {
    public var sent: Int
    public var dropped: Int
    public init(sent: Int, dropped: Int) {
        self.sent = sent
        self.dropped = dropped
    }
}

/// A typed command to the `camera` service (the helper serving as camera handles it).
public struct CameraExposureCommand: Command, Equatable {
    public typealias Reply = Ack
    public static let name = "camera.exposure.command"
    public static let delivery = CommandDelivery.service("camera")
    public var ms: Int
    public init(ms: Int) { self.ms = ms }
}

/// A broadcast command: every helper service answers with its pid.
public struct SnapshotCommand: Command {
    public typealias Reply = Int
    public static let name = "snapshot.take"
    public static let delivery = CommandDelivery.broadcast
    public init() {}
}

/// A command for the coordinator (the test process serves it).
public struct StatusCommand: Command {
    public typealias Reply = String
    public static let name = "status.report"
    public static let delivery = CommandDelivery.coordinator
    public var from: String
    public init(from: String) { self.from = from }
}

/// A command nobody handles: the start-up check must name it.
public struct UnhandledCommand: Command {
    public typealias Reply = Bool
    public static let name = "nobody.handles"
    public static let delivery = CommandDelivery.service("camera")
    public init() {}
}

/// What a survivor process does in the test where the *other* process of a
/// connection is killed: it connects to (or accepts) the victim, keeps calls
/// in flight, says when it is time to kill, and reports how its calls ended.
public struct SurvivorPlan: Codable, Sendable {
    /// Which end of the Unix socket the survivor is.
    public enum Role: String, Codable, Sendable {
        /// The survivor connects to the victim's bus service.
        case connect
        /// The survivor listens; the victim connects.
        case listen
    }
    public var role: Role
    /// `connect`: the victim's bus directory and service name; `listen`: the socket path in `path`.
    public var busDirectory: String
    public var name: String
    public var path: String
    /// Calls to complete before the survivor says "armed".
    public var killAfter: Int

    public init(role: Role, busDirectory: String = "", name: String = "", path: String = "", killAfter: Int) {
        self.role = role
        self.busDirectory = busDirectory
        self.name = name
        self.path = path
        self.killAfter = killAfter
    }
}

/// The helper's echo of a `ByteBuffer`, saying whether the request's bytes were
/// read in place from the caller's shared-memory buffer pool.
public struct PooledEcho: Codable, Sendable {
    public var bytes: ByteBuffer
    public var receivedInPlace: Bool
    public init(bytes: ByteBuffer, receivedInPlace: Bool) {
        self.bytes = bytes
        self.receivedInPlace = receivedInPlace
    }
}

/// The load both kill tests keep on a connection to the helper: four lanes of
/// `echo.bytes` calls (16 B, 4 KiB, 100 kB, 2 MB), each calling until a call
/// fails, and one `hang` call that is never answered. Each lane's end is
/// recorded with its error code (nil: it returned) and its `CLOCK_MONOTONIC`
/// time, the clock the tests kill by.
public final class CallLoad: Sendable {
    /// Calls answered so far.
    public let completed = Atomic<Int>(0)
    /// How and when each of the five lanes ended.
    package let outcomes = Locked<[(code: IntercomError.Code?, atNanos: UInt64)]>([])
    /// A task waiting in ``waitUntil(completed:)``, with its target.
    private let milestone = Locked<(target: Int, waiter: CheckedContinuation<Void, Never>?)>((0, nil))

    public init() {}

    /// Adds the five lanes to `group`; the helper sends `hang.started` once the hanging call runs.
    public func start(on peer: Peer, in group: inout ThrowingTaskGroup<Void, any Error>) {
        for lane in 0..<4 {
            let size = [16, 4096, 100_000, 2_000_000][lane]
            group.addTask {
                while true {
                    do {
                        _ = try await peer.call(
                            "echo.bytes", [UInt8](repeating: UInt8(lane), count: size), returning: [UInt8].self,
                            timeout: .seconds(20))
                        let count = self.completed.add(1, ordering: .relaxed).newValue
                        self.takeWaiter { count >= $0 }?.resume()
                    } catch let error as IntercomError {
                        self.ended(error.code)
                        return
                    }
                }
            }
        }
        group.addTask {
            do {
                _ = try await peer.call("hang", 0, returning: Int.self, timeout: .seconds(20))
                self.ended(nil)
            } catch let error as IntercomError {
                self.ended(error.code)
            }
        }
    }

    /// Returns once `target` calls were answered, or a lane ended (the
    /// connection is going down: the target may never be reached).
    public func waitUntil(completed target: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // Read under the milestone lock: a completion or an end after it finds the waiter.
            let reached = self.milestone.withLock { milestone -> Bool in
                if self.completed.load(ordering: .relaxed) >= target || !self.outcomes.withLock({ $0.isEmpty }) {
                    return true
                }
                milestone = (target, continuation)
                return false
            }
            if reached { continuation.resume() }
        }
    }

    /// The waiter, taken if `reached` says its target is met.
    private func takeWaiter(_ reached: (Int) -> Bool) -> CheckedContinuation<Void, Never>? {
        self.milestone.withLock { milestone in
            guard let waiter = milestone.waiter, reached(milestone.target) else { return nil }
            milestone.waiter = nil
            return waiter
        }
    }

    private func ended(_ code: IntercomError.Code?) {
        let now = monotonicNanos()
        self.outcomes.withLock { $0.append((code, now)) }
        self.takeWaiter { _ in true }?.resume()
    }
}

/// How the survivor's pending calls ended once the victim was killed.
public struct SurvivorReport: Codable, Sendable {
    /// The error code of each call still pending at the kill (wire names).
    public var codes: [String]
    /// When each of those calls failed, in `CLOCK_MONOTONIC` nanoseconds (one clock for all processes).
    public var failedAtNanos: [UInt64]
    /// Whether the survivor's connection to the victim ran over shared memory.
    public var wasSharedMemory: Bool

    public init(codes: [String], failedAtNanos: [UInt64], wasSharedMemory: Bool) {
        self.codes = codes
        self.failedAtNanos = failedAtNanos
        self.wasSharedMemory = wasSharedMemory
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: comparable between processes on one host.
public func monotonicNanos() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
