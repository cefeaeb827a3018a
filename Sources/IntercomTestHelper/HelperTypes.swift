// Types shared by the test helper process and the tests that drive it.
public import Intercom

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
