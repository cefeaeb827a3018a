import Foundation
import Intercom
import IntercomTestSupport
import Testing

@Suite("Shared-memory transport")
struct SharedMemoryTransportTests {
    @Test func aPairInOneProcessMovesToSharedMemoryAndCalls() async throws {
        try await withResourceCheck {
        let router = Router()
        try router.register("echo") { (bytes: [UInt8], _) in bytes }
        let (first, second) = try await Peer.pair(routers: (nil, router))
        #expect(first.isSharedMemory)
        #expect(second.isSharedMemory)
        let reply = try await first.call("echo", [UInt8](repeating: 7, count: 100), returning: [UInt8].self)
        #expect(reply == [UInt8](repeating: 7, count: 100))
        await first.close()
        await second.waitUntilClosed()
        }
    }
}
