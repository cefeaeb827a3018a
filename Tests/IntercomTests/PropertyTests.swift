import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// Remote properties: get, set (validated, refusable), observe with
/// coalescing, and the service record listing them.
@Suite struct PropertyTests {
    @Test func aClientReadsSetsAndObservesAServicesProperty() async throws {
        try await withTemporaryBus { temporary in
            try await withResourceCheck {
                let router = Router()
                let exposure = try router.property("camera.exposure", initial: 10) { (ms: Int) in
                    guard (1...1000).contains(ms) else { throw IntercomError(.invalidPayload, "exposure must be 1…1000 ms; got \(ms)") }
                }
                let service = try await temporary.bus.serve("camera", router: router)
                #expect(service.info.properties == ["camera.exposure"])
                #expect(try await temporary.bus.waitForService("camera", timeout: .seconds(10)).properties == ["camera.exposure"])
                let client = try await temporary.bus.connect(to: "camera")
                #expect(try await client.property("camera.exposure", as: Int.self) == 10)
                #expect(try await client.setProperty("camera.exposure", to: 20) == 20)
                #expect(exposure.value == 20)
                // The service refuses a value it does not accept; nothing changes.
                let refused = await expectIntercomError(.invalidPayload) {
                    try await client.setProperty("camera.exposure", to: 5000)
                }
                #expect(refused?.message.contains("exposure must be 1…1000 ms; got 5000") == true, "\(refused?.message ?? "")")
                #expect(try await client.property("camera.exposure", as: Int.self) == 20)

                // Observing: the current value first, then each change — the service's own and a client's.
                let observer = try await temporary.bus.connect(to: "camera")
                var values = observer.propertyChanges("camera.exposure", as: Int.self).makeAsyncIterator()
                #expect(try await values.next() == 20)
                exposure.value = 30
                #expect(try await values.next() == 30)
                try await client.setProperty("camera.exposure", to: 40)
                #expect(try await values.next() == 40)

                // A slow observer is coalesced to the latest value, not queued: 100
                // changes while it does not read, then its next value is the last.
                for ms in 101...200 { exposure.value = ms }
                // A round trip on the observer's own connection: every change was sent
                // to it before this reply, so all of them reached its queue.
                #expect(try await observer.property("camera.exposure", as: Int.self) == 200)
                #expect(try await values.next() == 200)
                try await client.setProperty("camera.exposure", to: 7)
                #expect(try await values.next() == 7)

                await observer.close()
                await client.close()
                await service.close()
            }
        }
    }

    @Test func aPlainListenerPublishesItsRoutersPropertyChangesToo() async throws {
        try await withResourceCheck {
            let router = Router()
            let mode = try router.property("mode", initial: "idle")
            let listener = try await PeerListener.listen(unixPath: TemporaryDirectory.shared.socketPath(), router: router)
            let client = try await Peer.connect(unixPath: listener.path)
            var modes = client.propertyChanges("mode", as: String.self).makeAsyncIterator()
            #expect(try await modes.next() == "idle")
            mode.value = "running"
            #expect(try await modes.next() == "running")
            await client.close()
            await listener.close()
        }
    }

    @Test func anUnknownPropertyIsAnUnknownMethodAndNamesClashLoudly() async throws {
        let router = Router()
        try router.property("mode", initial: "idle")
        #expect(router.propertyNames == ["mode"])
        let clash = #expect(throws: IntercomError.self) { try router.property("mode", initial: 1) }
        #expect(clash?.code == .conflict)
        let (first, second) = try await Peer.pair(routers: (nil, router))
        #expect(try await first.property("mode", as: String.self) == "idle")
        let unknown = await expectIntercomError(.unknownMethod) { _ = try await first.property("speed", as: Int.self) }
        #expect(unknown != nil)
        await first.close()
        await second.waitUntilClosed()
    }
}
