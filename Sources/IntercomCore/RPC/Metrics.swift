@_spi(IntercomInternals) internal import IntercomTransport
public import CoreMetrics

/// Whether a peer reports metrics through swift-metrics, and to which backend.
///
/// Off by default: a call then pays one branch. On, each call made or served
/// costs a lock and a dictionary lookup (the metric objects are made once per
/// method) plus what the backend does.
///
/// What is reported, with the dimensions `service` (``Peer/Configuration/name``),
/// `side` (`client`: calls this side made; `server`: calls it served) and `method`:
///
/// | label | kind | more dimensions |
/// |---|---|---|
/// | `intercom_calls` | counter | |
/// | `intercom_call_errors` | counter | `code` (``IntercomError/Code``'s name) |
/// | `intercom_call_duration` | timer | |
/// | `intercom_payload_bytes` | counter | `direction` (`in`, `out`): request and reply payloads |
/// | `intercom_connections` | meter (up, down) | only `service` |
/// | `intercom_pending_calls` | meter | only `service`: calls made that wait for their reply |
/// | `intercom_running_handlers` | meter | only `service`: handlers running for the other sides |
/// | `intercom_queued_calls` | meter | only `service`: calls waiting for a free handler (the concurrency limit) |
///
/// The three queue depths are summed over the service's connections (each
/// connection adds what it changed and takes its share back when it closes).
///
/// Served methods that the router does not handle count as method `(unknown)`,
/// and past 1,024 distinct methods the rest count as `(other)`: a stranger
/// cannot make the metrics grow without bound. Supervisors report
/// `intercom_worker_restarts` (dimension `worker`) through ``Supervisor/init(metrics:)``.
///
/// ```swift
/// MetricsSystem.bootstrap(PrometheusMetricsFactory(…))
/// configuration.metrics = .system
/// ```
public struct MetricsReporting: Sendable {
    let factory: (@Sendable () -> any MetricsFactory)?

    /// No metrics (the default).
    public static let off = MetricsReporting(factory: nil)
    /// The backend bootstrapped in `MetricsSystem` (when the connection starts).
    public static let system = MetricsReporting(factory: { MetricsSystem.factory })

    /// A backend of your own, e.g. swift-metrics' `TestMetrics` in a test.
    public static func factory(_ factory: any MetricsFactory) -> MetricsReporting {
        MetricsReporting(factory: { factory })
    }

    /// Whether anything is reported.
    public var isEnabled: Bool { self.factory != nil }
}

/// One peer's metric objects, made on first use per method.
final class PeerMetrics: Sendable {
    enum Side: String, Sendable { case client, server }

    private struct Key: Hashable {
        var method: String
        var side: Side
    }

    private final class MethodMetrics: Sendable {
        let calls: Counter
        let duration: CoreMetrics.Timer
        let bytesIn: Counter
        let bytesOut: Counter
        let errors: Locked<[String: Counter]>

        init(_ dimensions: [(String, String)], factory: any MetricsFactory) {
            self.calls = Counter(label: "intercom_calls", dimensions: dimensions, factory: factory)
            self.duration = CoreMetrics.Timer(label: "intercom_call_duration", dimensions: dimensions, factory: factory)
            self.bytesIn = Counter(label: "intercom_payload_bytes", dimensions: dimensions + [("direction", "in")], factory: factory)
            self.bytesOut = Counter(label: "intercom_payload_bytes", dimensions: dimensions + [("direction", "out")], factory: factory)
            self.errors = Locked([:])
        }
    }

    static let methodLimit = 1024

    let factory: any MetricsFactory
    let service: String
    private let connections: Meter
    private let pendingCalls: Meter
    private let runningHandlers: Meter
    private let queuedCalls: Meter
    /// What this connection last added to the depth meters.
    private let reportedDepths = Locked<(pending: Int, running: Int, queued: Int)>((0, 0, 0))
    private let methods = Locked<[Key: MethodMetrics]>([:])

    init?(_ reporting: MetricsReporting, service: String) {
        guard let make = reporting.factory else { return nil }
        self.factory = make()
        self.service = service
        self.connections = Meter(label: "intercom_connections", dimensions: [("service", service)], factory: self.factory)
        self.pendingCalls = Meter(label: "intercom_pending_calls", dimensions: [("service", service)], factory: self.factory)
        self.runningHandlers = Meter(label: "intercom_running_handlers", dimensions: [("service", service)], factory: self.factory)
        self.queuedCalls = Meter(label: "intercom_queued_calls", dimensions: [("service", service)], factory: self.factory)
    }

    func connectionOpened() { self.connections.increment() }
    func connectionClosed() {
        self.connections.decrement()
        self.depths(pending: 0, running: 0, queued: 0)
    }

    /// Moves the depth meters by what changed on this connection since the last report.
    func depths(pending: Int, running: Int, queued: Int) {
        let delta = self.reportedDepths.withLock { last -> (Int, Int, Int) in
            defer { last = (pending, running, queued) }
            return (pending - last.pending, running - last.running, queued - last.queued)
        }
        Self.move(self.pendingCalls, by: delta.0)
        Self.move(self.runningHandlers, by: delta.1)
        Self.move(self.queuedCalls, by: delta.2)
    }

    /// A meter takes only non-negative steps each way.
    private static func move(_ meter: Meter, by delta: Int) {
        if delta > 0 { meter.increment(by: Double(delta)) } else if delta < 0 { meter.decrement(by: Double(-delta)) }
    }

    /// Records one call made or served: its payload bytes each way, how long
    /// it took, and its error's code if it failed.
    func record(_ side: Side, method: String, out: Int, in received: Int, duration: Duration, error: (any Error)?) {
        let metrics = self.metrics(for: Key(method: method, side: side))
        metrics.calls.increment()
        metrics.bytesOut.increment(by: Int64(out))
        metrics.bytesIn.increment(by: Int64(received))
        let (seconds, attoseconds) = duration.components
        metrics.duration.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        guard let error else { return }
        let code =
            switch error {
            case let error as IntercomError: error.code.name
            case is CancellationError: IntercomError.Code.cancelled.name
            default: IntercomError.Code.remote.name
            }
        let counter = metrics.errors.withLock { errors in
            if let counter = errors[code] { return counter }
            let counter = Counter(
                label: "intercom_call_errors", dimensions: self.dimensions(method: method, side: side) + [("code", code)],
                factory: self.factory)
            errors[code] = counter
            return counter
        }
        counter.increment()
    }

    private func metrics(for key: Key) -> MethodMetrics {
        self.methods.withLock { methods in
            if let found = methods[key] { return found }
            var key = key
            if methods.count >= Self.methodLimit {
                key.method = "(other)"
                if let found = methods[key] { return found }
            }
            let made = MethodMetrics(self.dimensions(method: key.method, side: key.side), factory: self.factory)
            methods[key] = made
            return made
        }
    }

    private func dimensions(method: String, side: Side) -> [(String, String)] {
        [("service", self.service), ("side", side.rawValue), ("method", method)]
    }
}

extension MetricsReporting {
    /// A counter of this backend, as a function that adds one to it; nil when off.
    /// (For the layers above, which need not import swift-metrics.)
    package func counter(_ label: String, dimensions: [(String, String)]) -> (@Sendable () -> Void)? {
        guard let make = self.factory else { return nil }
        let counter = Counter(label: label, dimensions: dimensions, factory: make())
        return { counter.increment() }
    }
}
