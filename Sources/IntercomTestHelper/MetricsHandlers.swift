import Intercom
import MetricsTestKit
import InMemoryTracing

/// The helper's own metrics backend (`--metrics`): what it records as a
/// server, which a test reads back with `metrics.count`.
let helperMetrics = TestMetrics()

/// Asks for the total of a counter with these dimensions, in order.
public struct CounterQuery: Codable, Sendable {
    public var label: String
    public var dimensions: [[String]]

    public init(label: String, dimensions: [(String, String)]) {
        self.label = label
        self.dimensions = dimensions.map { [$0.0, $0.1] }
    }
}

/// The helper's tracer (`--tracing`): the spans it finished, which a test
/// reads back with `tracing.finished`.
let helperTracer = InMemoryTracer()

/// A finished span as the tests compare them.
public struct SpanRecord: Codable, Sendable, Hashable {
    public var name: String
    public var traceID: String
    public var spanID: String
    public var parentSpanID: String?
    public var failed: Bool

    public init(name: String, traceID: String, spanID: String, parentSpanID: String?, failed: Bool) {
        self.name = name
        self.traceID = traceID
        self.spanID = spanID
        self.parentSpanID = parentSpanID
        self.failed = failed
    }
}

func registerMetricsHandlers(on router: Router) throws {
    try router.register("tracing.finished") { (_: Int, _: CallContext) -> [SpanRecord] in
        helperTracer.finishedSpans.map {
            SpanRecord(
                name: $0.operationName, traceID: $0.traceID, spanID: $0.spanID, parentSpanID: $0.parentSpanID,
                failed: !$0.errors.isEmpty)
        }
    }
    // A routed one-way message whose handler does nothing: its span is what counts.
    try router.register("traced.note") { (_: Note, _: CallContext) in }
    // Calls back into the caller from inside its span: the trace continues through both processes.
    try router.register("tracing.callBack") { (_: Int, context: CallContext) -> Int in
        try await context.peer.call("traced.leaf", 0, returning: Int.self)
    }
    // Publishes an event to the caller from inside the handler's span.
    try router.register("tracing.publish") { (_: Int, context: CallContext) -> Bool in
        try context.peer.publish("traced.event", 1) == .sent
    }
    try router.register("metrics.count") { (query: CounterQuery, _: CallContext) -> Int64 in
        helperMetrics.counterTotal(label: query.label, dimensions: query.dimensions.map { ($0[0], $0[1]) })
    }
}
