import Foundation
import Intercom
import IntercomTestHelper
import IntercomTestSupport
import Testing

/// The snippets of docs/coming-from/ipc-manager.md, run against real
/// service processes on a private bus.
@Suite(.serialized) struct ComingFromIPCManagerTests {
    @Test func serviceHandlesAndTheBus() async throws {
        try await withTemporaryBus { temporary in
            try await withResourceCheck {
                let first = try ServiceProcess(name: "indexer", bus: temporary)
                let bus = temporary.bus
                // guide: handles
                let indexer = bus.makeHandle(to: "indexer")  // connects on first use, reconnects after a restart
                let sum = try await indexer.call("math.add", AddRequest(a: 1, b: 2), returning: Int.self, timeout: .seconds(10))  // sync_request
                #expect(sum == 3)

                let ping = try await bus.pingServices(timeout: .seconds(2))  // a sanity check of every peer
                #expect(ping.received == ["indexer"])

                var presence = bus.serviceChanges().makeAsyncIterator()  // who comes and goes
                guard case .appeared(let service)? = try await presence.next() else { return }
                #expect(service.name == "indexer")
                // end guide
                #expect(try await indexer.call("intercom.quit", 0, returning: Bool.self))
                await first.waitForExit()
                await indexer.close()
            }
        }
    }

    @Test func waitingOnMany() async throws {
        try await withResourceCheck {
            let (a, aPeer) = try await Peer.pair()
            let (b, bPeer) = try await Peer.pair()
            // guide: many
            try await bPeer.send("ready", 1)
            let first = try await Peer.firstWithMessage(among: [a, b], timeout: .seconds(5))  // await one of N
            #expect(first === b)
            #expect(try await b.waitForMessage(timeout: .zero))  // poll(0): one waits, and stays queued
            // end guide
            for peer in [a, aPeer, b, bPeer] { await peer.close() }
        }
    }
}
