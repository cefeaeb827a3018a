import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// The snippets of docs/coming-from/boss-multiprocess.md, run: methods and
/// attributes of an object in another process, over a real bus socket.
@Suite(.serialized) struct ComingFromBossTests {
    @Test func methodsAttributesAndErrors() async throws {
        try await withTemporaryBus { temporary in
            try await withResourceCheck {
                let bus = temporary.bus
                // guide: remote object
                struct Move: Codable, Sendable { var x: Double; var y: Double }
                struct StageError: Error, Codable { var reason: String }

                let router = Router()
                try router.register("stage.move") { (move: Move, _: CallContext) -> Bool in
                    guard abs(move.x) <= 50, abs(move.y) <= 50 else { throw StageError(reason: "out of travel") }
                    return true
                }
                // An attribute: typed, validated by its owner, observable.
                let speed = try router.property("stage.speed", initial: 1.0) { speed in
                    guard speed > 0, speed <= 10 else { throw IntercomError(.invalidPayload, "speed must be in (0, 10]") }
                }
                let service = try await bus.serve("stage", router: router)

                // In the other process:
                var configuration = Peer.Configuration()
                configuration.remoteErrors.register(StageError.self)  // rethrown as itself
                let stage = try await bus.connect(to: "stage", configuration: configuration)
                #expect(try await stage.call("stage.move", Move(x: 1, y: 2), returning: Bool.self))  // _rpc
                await #expect(throws: StageError.self) { _ = try await stage.call("stage.move", Move(x: 99, y: 0), returning: Bool.self) }
                #expect(try await stage.property("stage.speed", as: Double.self) == 1.0)  // _get_attribute
                try await stage.setProperty("stage.speed", to: 2.5)  // _set_attribute
                await #expect(throws: IntercomError.self) { try await stage.setProperty("stage.speed", to: 100.0) }

                var speeds = stage.propertyChanges("stage.speed", as: Double.self).makeAsyncIterator()
                #expect(try await speeds.next() == 2.5)  // the current value first
                speed.value = 4  // the owner's own change reaches every observer
                #expect(try await speeds.next() == 4)
                await stage.close()  // _rpc_stop
                await service.close()
                // end guide
            }
        }
    }
}
