import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// The snippets of docs/coming-from/magscope.md, run: typed commands between
/// services on a real bus (here all served by the test process).
@Suite(.serialized) struct ComingFromMagscopeTests {
    @Test func commandsRegistryAndDrain() async throws {
        try await withTemporaryBus { temporary in
            try await withResourceCheck {
                let bus = temporary.bus
                // guide: commands
                struct SetExposure: Command {
                    typealias Reply = Bool
                    static let name = "camera.exposure.set"
                    static let delivery = CommandDelivery.service("camera")
                    var ms: Int
                }
                struct Shutdown: Command {
                    typealias Reply = Bool
                    static let name = "all.shutdown"
                    static let delivery = CommandDelivery.broadcast
                }

                // One object registers all of its handlers at once (register_manager).
                final class CameraManager: RouteSet {
                    var routes: [Route] {
                        Route(SetExposure.name) { (command: SetExposure, _) in command.ms > 0 }
                        Route(Shutdown.name) { (_: Shutdown, _) in true }
                    }
                }
                let camera = Router()
                try camera.register(CameraManager())

                // validate_targets: before any process starts.
                let registry = try CommandRegistry([SetExposure.self, Shutdown.self])
                try registry.validate(roles: ["camera": camera])
                #expect(registry.target(of: SetExposure.name) == "camera")  // route_for
                #expect(registry.commands(for: "camera") == [SetExposure.name])  // handlers_for_target
                #expect(registry.table().contains("camera.exposure.set  service camera"))  // a printable table

                let service = try await bus.serve("camera", router: camera)
                #expect(try await bus.call(SetExposure(ms: 10)))  // delivered to its target
                let report = try await bus.broadcast(Shutdown())  // broadcast_command
                #expect(report.received == ["camera"])
                await service.close()
                // end guide
            }
        }
    }

    @Test func drainUntilQuitAndAccounting() async throws {
        try await withResourceCheck {
            let (coordinator, manager) = try await Peer.pair()
            // guide: drain
            for n in 1...3 { try await coordinator.send("work.item", n) }
            try await coordinator.send("quit", 0)
            try await coordinator.send("work.item", 4)  // after quit: left queued

            var items: [Int] = []
            let handled = try await manager.processMessages(until: "quit") { message in
                items.append(try message.decode(as: Int.self))
            }
            #expect(handled == 3 && items == [1, 2, 3])
            let traffic = await coordinator.close()  // sent/received accounting at shutdown
            #expect(traffic.framesSent == 6)  // 5 messages and the goodbye
            // end guide
            await manager.close()
        }
    }
}
