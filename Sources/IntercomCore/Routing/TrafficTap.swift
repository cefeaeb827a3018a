#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
internal import IntercomTransport
package import NIOCore
internal import Synchronization

/// One call, message or event a service saw, as `intercom monitor` shows it.
public struct TrafficRecord: Codable, Sendable, Hashable {
    /// What crossed the wire.
    public enum Kind: String, Codable, Sendable, Hashable {
        /// A call and its reply or error.
        case call
        /// A one-way message.
        case message
        /// An event the service published.
        case event
    }

    /// What it was.
    public var kind: Kind
    /// When it arrived (for an event: when it was published).
    public var time: Date
    /// The service that served it (or published the event).
    public var service: String
    /// The caller's name from its hello (empty for events).
    public var caller: String
    /// The caller's process, from the kernel where it is local.
    public var callerPID: Int32?
    /// The method called (or the event's topic).
    public var method: String
    /// The codec of the payloads (`binary`, `json`, a custom codec's name).
    public var codec: String
    /// The argument's (or event's) payload size in bytes.
    public var requestBytes: Int
    /// The first bytes of the payload, when the monitor asked for payloads.
    public var request: [UInt8]?
    /// The reply's payload size in bytes (calls that succeeded).
    public var replyBytes: Int?
    /// The first bytes of the reply's payload, when the monitor asked for payloads.
    public var reply: [UInt8]?
    /// How long the handler took, in microseconds (calls and messages).
    public var microseconds: Int64?
    /// The error the caller got, as `code: message`.
    public var error: String?

    /// What the record weighs in a monitor's queue and batch: its payload copies and 256 bytes for the rest.
    var queuedSize: Int { 256 + (self.request?.count ?? 0) + (self.reply?.count ?? 0) }

    package init(
        kind: Kind, time: Date, service: String, caller: String, callerPID: Int32?, method: String, codec: String,
        requestBytes: Int, replyBytes: Int?, microseconds: Int64?, error: String?
    ) {
        self.kind = kind
        self.time = time
        self.service = service
        self.caller = caller
        self.callerPID = callerPID
        self.method = method
        self.codec = codec
        self.requestBytes = requestBytes
        self.replyBytes = replyBytes
        self.microseconds = microseconds
        self.error = error
    }
}

/// Records shipped to a monitor together, with the count of those dropped since
/// the last batch because the monitor did not keep up.
public struct TrafficBatch: Codable, Sendable, Hashable {
    /// The records, oldest first.
    public var records: [TrafficRecord]
    /// Records left out since the previous batch (the monitor's queue was full).
    public var dropped: Int
    /// The service's client connections when the batch was sent, monitors not counted.
    public var connections: Int?

    /// Creates a batch.
    public init(records: [TrafficRecord], dropped: Int, connections: Int? = nil) {
        self.records = records
        self.dropped = dropped
        self.connections = connections
    }
}

/// What a monitor asks of a service (`intercom.monitor`).
public struct MonitorRequest: Codable, Sendable, Hashable {
    /// How many bytes of each payload to include (0: sizes only). At most ``maxPayloadBytes``.
    public var payloadBytes: Int

    /// The most bytes of one payload a monitor gets.
    public static let maxPayloadBytes = 16 * 1024

    /// Creates a request.
    public init(payloadBytes: Int) { self.payloadBytes = payloadBytes }
}

/// Copies of a router's traffic for the monitors attached to it.
///
/// Off until a monitor attaches: serving a call then costs one atomic load.
/// Each monitor has a queue of at most ``queueLimit`` records and
/// ``queueByteLimit`` bytes of payload copies (each payload cut to what it
/// asked for); when the queue is full new records are dropped and counted,
/// never waited for — a slow or stopped monitor cannot slow the service.
package final class TrafficTap: Sendable {
    /// Records one monitor's queue holds before dropping.
    package static let queueLimit = 1024
    /// Bytes of payload copies (plus 256 a record) one monitor's queue holds before dropping.
    package static let queueByteLimit = 4 << 20

    package final class Subscription: Sendable {
        let payloadBytes: Int
        private struct Queue {
            var records: [TrafficRecord] = []
            var bytes = 0
            var dropped = 0
            var waiter: CheckedContinuation<Void, Never>?
            var closed = false
        }
        private let queue = Mutex(Queue())

        init(payloadBytes: Int) { self.payloadBytes = payloadBytes }

        func offer(_ record: TrafficRecord) {
            let waiter = self.queue.withLock { queue -> CheckedContinuation<Void, Never>? in
                guard !queue.closed else { return nil }
                let size = record.queuedSize
                if queue.records.count >= TrafficTap.queueLimit || queue.bytes + size > TrafficTap.queueByteLimit {
                    queue.dropped += 1
                } else {
                    queue.records.append(record)
                    queue.bytes += size
                }
                defer { queue.waiter = nil }
                return queue.waiter
            }
            waiter?.resume()
        }

        /// Waits for records (or drops) and takes them all; nil once closed.
        package func next() async -> TrafficBatch? {
            while true {
                let taken = self.queue.withLock { queue -> TrafficBatch? in
                    guard !queue.records.isEmpty || queue.dropped > 0 else { return nil }
                    defer {
                        queue.records.removeAll(keepingCapacity: true)
                        queue.bytes = 0
                        queue.dropped = 0
                    }
                    return TrafficBatch(records: queue.records, dropped: queue.dropped)
                }
                if let taken { return taken }
                if self.queue.withLock({ $0.closed }) || Task.isCancelled { return nil }
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let ready = self.queue.withLock { queue -> Bool in
                            if queue.closed || !queue.records.isEmpty || queue.dropped > 0 { return true }
                            queue.waiter = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: {
                    self.close()
                }
            }
        }

        func close() {
            let waiter = self.queue.withLock { queue -> CheckedContinuation<Void, Never>? in
                queue.closed = true
                defer { queue.waiter = nil }
                return queue.waiter
            }
            waiter?.resume()
        }
    }

    private let subscriptions = Mutex<[ObjectIdentifier: Subscription]>([:])
    private let connectionCounter = Mutex<(@Sendable () -> [Peer])?>(nil)

    /// Tells the tap where the served connections are, for ``TrafficBatch/connections``.
    package func countConnections(_ peers: @escaping @Sendable () -> [Peer]) {
        self.connectionCounter.withLock { $0 = peers }
    }

    /// The connections served, monitors left out; nil if the tap was not told.
    var connections: Int? {
        self.connectionCounter.withLock { $0 }.map { peers in
            peers().count { !$0.isMonitorConnection.load(ordering: .relaxed) }
        }
    }
    private let attached = Atomic<Int>(0)

    package init() {}

    /// Whether a monitor is attached (the only cost of the tap when none is).
    package var isActive: Bool { self.attached.load(ordering: .relaxed) > 0 }

    /// Attaches a monitor; detach it with ``detach(_:)``.
    package func attach(payloadBytes: Int) -> Subscription {
        let subscription = Subscription(payloadBytes: max(0, min(payloadBytes, MonitorRequest.maxPayloadBytes)))
        self.subscriptions.withLock { $0[ObjectIdentifier(subscription)] = subscription }
        self.attached.add(1, ordering: .relaxed)
        return subscription
    }

    package func detach(_ subscription: Subscription) {
        subscription.close()
        if self.subscriptions.withLock({ $0.removeValue(forKey: ObjectIdentifier(subscription)) }) != nil {
            self.attached.subtract(1, ordering: .relaxed)
        }
    }

    /// Offers a record to every monitor, with the payloads cut to what each asked for.
    package func record(_ record: TrafficRecord, request: ByteBuffer?, reply: ByteBuffer?) {
        let subscriptions = self.subscriptions.withLock { Array($0.values) }
        for subscription in subscriptions {
            var copy = record
            if subscription.payloadBytes > 0 {
                copy.request = request.map { Self.prefix($0, subscription.payloadBytes) }
                copy.reply = reply.map { Self.prefix($0, subscription.payloadBytes) }
            }
            subscription.offer(copy)
        }
    }

    private static func prefix(_ buffer: ByteBuffer, _ count: Int) -> [UInt8] {
        buffer.getBytes(at: buffer.readerIndex, length: min(count, buffer.readableBytes)) ?? []
    }
}
