import Foundation
import Intercom
import IntercomTestSupport
import Testing

/// The snippets of docs/coming-from/epyrpc.md, run over a socket pair.
@Suite(.serialized) struct ComingFromEpyrpcTests {
    @Test func hierarchicalAPIsOnBothSides() async throws {
        try await withResourceCheck {
            // guide: apis
            // The receiving side: handlers by namespace, a worker count per API,
            // and a generic handler for what nobody handles.
            let neck = Router()
            let exposure = try neck.namespace("camera.exposure")
            try exposure.register("set") { (ms: Int, _: CallContext) in ms }
            try exposure.setWorkers(1)  // one call at a time on the exposure API
            try neck.setFallback { call in
                throw IntercomError(.unknownMethod, "nothing handles \(call.method) here")
            }

            let (head, body) = try await Peer.pair(routers: (nil, neck))
            // The calling side: an API object with its own defaults.
            let camera = head.api("camera", timeout: .seconds(2))
            #expect(try await camera.exposure.call("set", 12, returning: Int.self) == 12)
            await #expect(throws: IntercomError.self) { try await camera.call("focus.set", 3) }  // raised at the caller
            // end guide
            await head.close()
            await body.close()
        }
    }

    @Test func unsolicitedEventsAndStates() async throws {
        try await withResourceCheck {
            let (head, neck) = try await Peer.pair()
            // guide: unsolicited
            var states = neck.connectionStates().makeAsyncIterator()  // the transport-state listener
            #expect(await states.next() == .connected(pid: getpid()))
            let notes = head.api("notes", expectsReply: false)  // unsolicited by default: fire and forget
            try await notes.invoke("add", "calibrated")
            let note = try await neck.receiveMessage(timeout: .seconds(5))
            #expect(note.method == "notes.add")
            #expect(try note.decode(as: String.self) == "calibrated")
            await head.close()
            if case .lost(let why)? = await states.next() { #expect(why.code == .peerLost) } else { Issue.record("not lost") }
            // end guide
            await neck.close()
        }
    }
}
