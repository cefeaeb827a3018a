import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import InMemoryTracing
import Tracing
import Testing

/// Tracing through swift-distributed-tracing, with its in-memory tracer on
/// both sides of a real process boundary (the child keeps its own and answers
/// `tracing.finished`): a handler's span is the child of the caller's, calls
/// the handler makes continue the trace, messages carry it, errors are recorded.
@Suite(.serialized) struct TracingTests {
    /// Over a socket pair and across a TCP connection (the same frame extension).
    @Test(arguments: [TransportKind.socketpair, .tcp])
    func aTraceCrossesProcessesBothWays(kind: TransportKind) async throws {
        try await withResourceCheck {
            let tracer = InMemoryTracer()
            let router = Router()
            try router.register("traced.leaf") { (_: Int, _: CallContext) in 7 }
            var configuration = ChildProcess.configuration()
            configuration.tracing = .tracer(tracer)
            // Handlers on the child's connection thread: a message's handler has ended
            // before a call sent after it starts, so `tracing.finished` sees its span.
            let child = try await ChildProcess.spawn(
                kind, arguments: ["--tracing", "--connection-thread"], router: router, configuration: configuration)
            let peer = child.peer

            // One request: this process calls the child, whose handler calls back.
            let answer = try await tracer.withSpan("request") { _ in
                try await peer.call("tracing.callBack", 0, returning: Int.self)
            }
            #expect(answer == 7)
            let here = tracer.finishedSpans
            let request = try #require(here.first { $0.operationName == "request" })
            let callBack = try #require(here.first { $0.operationName == "tracing.callBack" })
            let leafServed = try #require(here.first { $0.operationName == "traced.leaf" })
            #expect(callBack.kind == .client && callBack.parentSpanID == request.spanID)
            #expect(leafServed.kind == .server)

            let there = try await peer.call("tracing.finished", 0, returning: [SpanRecord].self)
            let callBackServed = try #require(there.first { $0.name == "tracing.callBack" && $0.parentSpanID == callBack.spanID })
            let leafCall = try #require(there.first { $0.name == "traced.leaf" })
            #expect(leafCall.parentSpanID == callBackServed.spanID, "the handler's own call is its child")
            #expect(leafServed.parentSpanID == leafCall.spanID, "and this side serves it as the child of that")
            #expect(Set([request.traceID, callBack.traceID, leafServed.traceID, callBackServed.traceID, leafCall.traceID]).count == 1)

            // A failed call records its error; a one-way message carries the trace too.
            tracer.clearAll()
            await expectIntercomError(.unknownMethod) { _ = try await peer.call("no.such.method", 0, returning: Int.self) }
            let failed = try #require(tracer.finishedSpans.first { $0.operationName == "no.such.method" })
            #expect(!failed.errors.isEmpty && failed.status?.code == .error)

            try await tracer.withSpan("note") { _ in try await peer.send("traced.note", Note(index: 1, text: "abc")) }
            let produced = try #require(tracer.finishedSpans.first { $0.operationName == "traced.note" })
            #expect(produced.kind == .producer)
            let consumed = try await peer.call("tracing.finished", 0, returning: [SpanRecord].self)
                .first { $0.name == "traced.note" }
            #expect(consumed?.parentSpanID == produced.spanID)
            #expect(consumed?.traceID == produced.traceID)

            // An event published inside a handler's span reaches the subscriber as that span's grandchild.
            tracer.clearAll()
            let events = peer.events("traced.event", as: Int.self)
            let published = try await tracer.withSpan("asking") { _ in try await peer.call("tracing.publish", 0, returning: Bool.self) }
            #expect(published)
            var iterator = events.makeAsyncIterator()
            #expect(try await iterator.next() == .event(1))
            let asking = try #require(tracer.finishedSpans.first { $0.operationName == "tracing.publish" })
            let delivered = try #require(tracer.finishedSpans.first { $0.operationName == "traced.event" })
            #expect(delivered.kind == .consumer)
            let childSpans = try await peer.call("tracing.finished", 0, returning: [SpanRecord].self)
            let servedPublish = try #require(childSpans.first { $0.name == "tracing.publish" && $0.parentSpanID == asking.spanID })
            let producer = try #require(childSpans.first { $0.name == "traced.event" })
            #expect(producer.parentSpanID == servedPublish.spanID)
            #expect(delivered.parentSpanID == producer.spanID)
            #expect(delivered.traceID == asking.traceID)
            await child.shutdown()
        }
    }
}
