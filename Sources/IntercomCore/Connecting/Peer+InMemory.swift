package import IntercomTransport
internal import IntercomWire
package import NIOCore

extension Peer {
    /// Two peers connected in memory on `loop`, after a real handshake: the
    /// engine of `IntercomTesting`'s `InMemoryConnection`.
    ///
    /// - Throws: ``IntercomError`` if the handshake fails.
    package static func inMemoryPair(
        on loop: any EventLoop, routers: (first: Router?, second: Router?), configurations: (first: Configuration, second: Configuration)
    ) async throws(IntercomError) -> (first: Peer, second: Peer, link: InMemoryLink) {
        let link = InMemoryLink.make(
            on: loop, limits: (configurations.first.limits, configurations.second.limits),
            watermarks: (configurations.first.inMemoryWatermarks, configurations.second.inMemoryWatermarks))
        let promises = [loop.makePromise(of: Peer.self), loop.makePromise(of: Peer.self)]
        let configurations = [configurations.first, configurations.second]
        let routers = [routers.first, routers.second]
        let handshakes = (0..<2).map { side in
            Handshake(transport: link.ends[side], router: routers[side], configuration: configurations[side]) { result in
                promises[side].completeWith(result.mapError { $0 as any Error })
            }
        }
        for side in 0..<2 { link.ends[side].setReceiver(handshakes[side]) }
        loop.execute { for handshake in handshakes { handshake.transportActive() } }
        do {
            let first = try await promises[0].futureResult.get()
            let second = try await promises[1].futureResult.get()
            return (first, second, link)
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.connectionFailed, "in-memory handshake: \(error)")
        }
    }
}

extension Peer.Configuration {
    fileprivate var inMemoryWatermarks: (low: Int, high: Int) {
        let high = max(self.outboundHighWatermark, 1)
        return (min(self.outboundLowWatermark, high), high)
    }
}
