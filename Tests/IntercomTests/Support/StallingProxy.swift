import Intercom
import NIOCore
import NIOPosix
import Synchronization

/// A TCP proxy on the loopback address that forwards to `upstream` until told
/// to stall — then drops every byte both ways without closing anything, as a
/// cut cable or a host that lost power would: neither end hears of it from
/// the kernel.
final class StallingProxy: Sendable {
    let endpointPort: Int
    private let server: any Channel
    private let stalled = Mutex(false)
    private let connections = Mutex<[any Channel]>([])

    private init(server: any Channel) {
        self.server = server
        self.endpointPort = server.localAddress?.port ?? 0
    }

    static func start(upstreamPort: Int) async throws -> StallingProxy {
        let shared = Shared()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            // Nothing is read from the client until the upstream connection exists
            // (its first bytes would otherwise be lost).
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelInitializer { inbound in
                shared.track(inbound)
                return ClientBootstrap(group: inbound.eventLoop)
                    .connect(host: "127.0.0.1", port: upstreamPort)
                    .flatMap { outbound in
                        shared.track(outbound)
                        return inbound.pipeline.addHandler(Forward(to: outbound, shared: shared)).flatMap {
                            outbound.pipeline.addHandler(Forward(to: inbound, shared: shared))
                        }.flatMap {
                            inbound.setOption(ChannelOptions.autoRead, value: true)
                        }
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let proxy = StallingProxy(server: server)
        shared.adopt(proxy)
        return proxy
    }

    /// From now on, nothing gets through either way.
    func stall() { self.stalled.withLock { $0 = true } }

    var isStalled: Bool { self.stalled.withLock { $0 } }

    func close() async {
        try? await self.server.close()
        for channel in self.connections.withLock({ $0 }) { try? await channel.close() }
    }

    func track(_ channel: any Channel) { self.connections.withLock { $0.append(channel) } }

    /// Lets the channel initializers reach the proxy made after them.
    private final class Shared: Sendable {
        let proxy = Mutex<StallingProxy?>(nil)
        private let early = Mutex<[any Channel]>([])
        func adopt(_ proxy: StallingProxy) {
            self.proxy.withLock { $0 = proxy }
            for channel in self.early.withLock({ $0 }) { proxy.track(channel) }
        }
        func track(_ channel: any Channel) {
            if let proxy = self.proxy.withLock({ $0 }) { proxy.track(channel) } else { self.early.withLock { $0.append(channel) } }
        }
        var isStalled: Bool { self.proxy.withLock { $0 }?.isStalled ?? false }
    }

    private final class Forward: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let other: any Channel
        let shared: Shared
        init(to other: any Channel, shared: Shared) {
            self.other = other
            self.shared = shared
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !self.shared.isStalled else { return }
            self.other.writeAndFlush(self.unwrapInboundIn(data), promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) {
            self.other.close(promise: nil)
        }
    }
}
