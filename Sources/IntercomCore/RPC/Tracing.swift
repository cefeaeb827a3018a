internal import IntercomTransport
public import Tracing
internal import IntercomWire

/// Whether a peer traces calls and one-way messages through
/// swift-distributed-tracing, and with which tracer.
///
/// On, a call made inside a span (or none: a new trace) gets a `client` span
/// named after its method; its context travels in the call frame (extension
/// tag 3, what the tracer injects — `traceparent` and `tracestate` for W3C
/// tracers such as swift-otel's); the other side runs the handler in a
/// `server` span that is the child of the caller's, with its context as
/// `ServiceContext.current`, so calls the handler makes continue the trace.
/// One-way messages and events carry it the same way (`producer` and
/// `consumer` spans; an event's consumer span marks its arrival).
/// Failed calls record their error on both spans.
///
/// ```swift
/// InstrumentationSystem.bootstrap(otelTracer)
/// configuration.tracing = .system
/// ```
public struct TracingReporting: Sendable {
    let tracer: (@Sendable () -> any Tracer)?

    /// No tracing (the default): one branch per call.
    public static let off = TracingReporting(tracer: nil)
    /// The tracer bootstrapped in `InstrumentationSystem`.
    public static let system = TracingReporting(tracer: { InstrumentationSystem.tracer })

    /// A tracer of your own (swift-distributed-tracing's `InMemoryTracer` in a test).
    public static func tracer(_ tracer: any Tracer) -> TracingReporting {
        TracingReporting(tracer: { tracer })
    }

    /// Whether anything is traced.
    public var isEnabled: Bool { self.tracer != nil }
}

/// Writes a trace context into a frame's extension, as string pairs.
struct TraceContextInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Reads a trace context from a frame's extension.
struct TraceContextExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? {
        carrier[key]
    }
}

extension Peer {
    /// Starts the span of a call or message this side sends; returns it with
    /// the context to put in the frame.
    func startOutgoingSpan(_ method: String, kind: SpanKind) -> OutgoingSpan? {
        guard let tracer = self.tracer else { return nil }
        let span = tracer.startSpan(method, context: ServiceContext.current ?? .topLevel, ofKind: kind)
        span.attributes["rpc.system"] = "intercom"
        span.attributes["rpc.method"] = method
        span.attributes["intercom.peer"] = self.remote.name
        var carrier: [String: String] = [:]
        tracer.inject(span.context, into: &carrier, using: TraceContextInjector())
        return OutgoingSpan(span: span, carrier: carrier)
    }

    /// Runs `body` in the span of a call or message that arrived with `carrier`.
    func withIncomingSpan<Value>(
        _ method: String, carrier: [String: String]?, kind: SpanKind, _ body: () async throws -> Value
    ) async throws -> Value {
        guard let tracer = self.tracer else { return try await body() }
        var context = ServiceContext.topLevel
        if let carrier { tracer.extract(carrier, into: &context, using: TraceContextExtractor()) }
        return try await tracer.withSpan(method, context: context, ofKind: kind) { span in
            span.attributes["rpc.system"] = "intercom"
            span.attributes["rpc.method"] = method
            span.attributes["intercom.peer"] = self.remote.name
            return try await body()
        }
    }
}

extension Peer {
    /// Records an event's arrival as a `consumer` span, the child of the
    /// publisher's `producer` span (the subscriber's iteration is its own; the
    /// span marks the hand-over).
    func traceDelivery(of topic: String, carrier: [String: String]?) {
        guard let tracer = self.tracer else { return }
        var context = ServiceContext.topLevel
        if let carrier { tracer.extract(carrier, into: &context, using: TraceContextExtractor()) }
        let span = tracer.startSpan(topic, context: context, ofKind: .consumer)
        span.attributes["messaging.system"] = "intercom"
        span.attributes["messaging.destination.name"] = topic
        span.attributes["intercom.peer"] = self.remote.name
        span.end()
    }
}

extension Span {
    /// Ends the span, with `error` recorded (and the status an error) if there is one.
    func end(failing error: (any Error)?) {
        if let error {
            self.recordError(error)
            self.setStatus(SpanStatus(code: .error))
        }
        self.end()
    }
}

/// The span of an outgoing call, message or event, and its context to send along.
/// A struct, not a tuple: an optional tuple holding an existential is handled
/// through runtime metadata on every send, traced or not.
struct OutgoingSpan {
    let span: any Span
    let carrier: [String: String]
}
