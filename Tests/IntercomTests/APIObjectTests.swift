import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing

/// epyrpc's API objects and sub-API handlers: names relative to a prefix, on
/// the calling side with the API's own defaults, on the serving side grouped
/// in a router namespace.
@Suite(.serialized) struct APIObjectTests {
    @Test func anAPIObjectCallsRelativeNamesWithItsOwnDefaults() async throws {
        try await withResourceCheck {
            let child = try await ChildProcess.spawn(.socketpair)
            let peer = child.peer
            let camera = peer.api("camera", timeout: .seconds(10))
            #expect(camera.exposure.prefix == "camera.exposure")
            #expect(try await camera.exposure.call("set", SetExposure(ms: 5), returning: Ack.self) == Ack(ok: true, appliedMs: 5))

            // The API's default timeout travels with its calls: the handler sees it as its budget.
            let work = peer.api("work", timeout: .milliseconds(300))
            await expectIntercomError(.timeout) { _ = try await work.call("slow", 0, returning: Int.self) }
            var report: CancelReport?
            while report == nil {
                let message = try await peer.receiveMessage(timeout: .seconds(30))
                if message.method == "observed.cancelled" { report = try message.decode(as: CancelReport.self) }
            }
            #expect((1...300).contains(report?.budgetMs ?? 0), "the handler's budget: \(String(describing: report))")

            // `invoke` follows the API's choice: one-way messages here (the child echoes
            // notes that land in its inbox), calls there (no handler: unknownMethod).
            let notes = peer.api("notes", expectsReply: false)
            try await notes.invoke("add", Note(index: 3, text: "abc"))
            #expect(try await peer.receive(as: Note.self, timeout: .seconds(30)) == Note(index: 3, text: "cba"))
            await expectIntercomError(.unknownMethod) { try await peer.api("notes").invoke("add", Note(index: 4, text: "x")) }
            await child.shutdown()
        }
    }

    @Test func aRouterNamespaceRegistersRelativeNames() async throws {
        try await withResourceCheck {
            let router = Router()
            let exposure = try router.namespace("camera.exposure")
            try exposure.register("set") { (request: SetExposure, _) in Ack(ok: true, appliedMs: request.ms) }
            try exposure.namespace("limits").register("max") { (_: Int, _) in 1000 }
            #expect(exposure.methods == ["limits.max", "set"])
            #expect(router.methods == ["camera.exposure.limits.max", "camera.exposure.set"])
            await expectIntercomError(.invalidName) { _ = try router.namespace("bad..name") }
            await expectIntercomError(.conflict) { try exposure.register("set") { (_: Int, _) in 0 } }

            let (client, server) = try await Peer.pair(routers: (nil, router))
            #expect(try await client.api("camera").exposure.call("set", SetExposure(ms: 3), returning: Ack.self) == Ack(ok: true, appliedMs: 3))
            #expect(try await client.call("camera.exposure.limits.max", 0, returning: Int.self) == 1000)
            await client.close()
            await server.close()
        }
    }

    /// magscope's bulk registration: one object registers all of its handlers,
    /// all or none.
    @Test func anObjectRegistersAllItsHandlersAtOnce() async throws {
        try await withResourceCheck {
            let router = Router()
            try router.register(Calculator(offset: 10))
            #expect(router.methods == ["calc.add", "calc.negate", "calc.offset"])
            // A set that clashes with what is there, or with itself, registers nothing.
            await expectIntercomError(.conflict) {
                try router.register {
                    Route("calc.extra") { (value: Int, _) in value }
                    Route("calc.add") { (value: Int, _) in value }
                }
            }
            await expectIntercomError(.conflict) {
                try router.register {
                    Route("twice.a") { (value: Int, _) in value }
                    Route("twice.a") { (value: Int, _) in value }
                }
            }
            await expectIntercomError(.invalidName) { try router.register { Route("no good") { (value: Int, _) in value } } }
            #expect(router.methods == ["calc.add", "calc.negate", "calc.offset"])

            let (client, server) = try await Peer.pair(routers: (nil, router))
            #expect(try await client.call("calc.add", AddRequest(a: 1, b: 2), returning: Int.self) == 13)
            #expect(try await client.call("calc.negate", 7, returning: Int.self) == -7)
            await client.close()
            await server.close()
        }
    }
}

/// A service object that lists its own handlers.
struct Calculator: RouteSet {
    let offset: Int

    var routes: [Route] {
        Route("calc.add") { (request: AddRequest, _) in request.a + request.b + offset }
        Route("calc.negate") { (value: Int, _) in -value }
        if offset != 0 {
            Route("calc.offset") { (_: Int, _) in offset }
        }
    }
}
