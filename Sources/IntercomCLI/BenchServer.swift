import ArgumentParser
import Distributed
import Intercom
import NIOCore
import Synchronization

/// `intercom bench-server`: the child side of `intercom bench` (not for direct use).
struct BenchServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-server", abstract: "The child process of `intercom bench`.", shouldDisplay: false)

    @Option(help: "Connect to this address (a Unix socket path, tcp:// or tls://) instead of using standard input.")
    var connect: String?
    @OptionGroup var targets: BusOptions
    @Option(help: "Serve under this name on the bus in --bus-directory instead.") var serve: String?
    @Option(help: "The bus directory for --serve.") var busDirectory: String?
    @Option(help: "MiB of this side's shared-memory buffer pool.") var bufferPoolMib: Int = 32

    func validate() throws {
        try requireCount(self.bufferPoolMib, option: "--buffer-pool-mib", in: 0...1024)
    }

    func run() async throws {
        let router = Router()
        let received = Atomic<Int>(0)
        try router.register("bench.echo") { (bytes: [UInt8], _) in bytes }
        try router.register("bench.sink") { (bytes: [UInt8], _) in !bytes.isEmpty }
        try router.register("bench.sink.buffer") { (bytes: ByteBuffer, _) in bytes.readableBytes > 0 }
        try router.registerStream("bench.stream") { (n: Int, _: CallContext, stream: StreamWriter<[UInt8]>) in
            let item = [UInt8](repeating: 0x61, count: 64)
            for _ in 0..<n { try await stream.send(item) }
        }
        // The same in batches of `batch` items (`send(contentsOf:)`).
        try router.registerStream("bench.stream.batch") { (request: [Int], _: CallContext, stream: StreamWriter<[UInt8]>) in
            let item = [UInt8](repeating: 0x61, count: 64)
            let batch = [[UInt8]](repeating: item, count: request[1])
            var sent = 0
            while sent < request[0] {
                try await stream.send(contentsOf: batch.prefix(request[0] - sent))
                sent += min(request[1], request[0] - sent)
            }
        }
        try router.register("bench.reset") { (_: Int, _) -> Int in
            received.store(0, ordering: .relaxed)
            return 0
        }
        // The actor-call S1: the same echo as a distributed actor.
        let system = IntercomActorSystem(endpoint: "bench")
        let echo = BenchEchoActor(actorSystem: system)
        system.publish(echo, as: "echo")
        try system.install(on: router)
        defer { _ = echo }
        var configuration = try self.targets.configuration()
        configuration.name = "intercom-bench-server"
        configuration.handlerExecution = .connectionThread
        configuration.sharedMemory.bufferPoolSize = self.bufferPoolMib << 20
        let peer: Peer
        var service: BusService?
        if let name = self.serve, let directory = self.busDirectory {
            let served = try await Bus(directory: directory).serve(name, router: router, configuration: configuration)
            service = served
            var clients = served.clients.makeAsyncIterator()
            guard let client = await clients.next() else { return }
            peer = client
        } else if let path = self.connect {
            peer = try await Peer.connect(to: try Endpoint(parsing: path), router: router, configuration: configuration)
        } else {
            peer = try await Peer.adopt(fileDescriptor: 0, router: router, configuration: configuration)
        }
        await withTaskExecutorPreference(peer.executor) {
            do {
                while true {
                    // Counted per batch: the count is the receiver's only work, and
                    // one atomic add per message would be most of it.
                    var counted = 0
                    for message in try await peer.receiveMessages() {
                        if message.method == "bench.s2.end" {
                            received.add(counted, ordering: .relaxed)
                            counted = 0
                            try await peer.send(received.exchange(0, ordering: .relaxed))
                        } else {
                            counted += 1
                        }
                    }
                    received.add(counted, ordering: .relaxed)
                }
            } catch {
                // The connection ended: the benchmark is over.
            }
        }
        await service?.close()
    }
}

/// The distributed actor behind the actor-call S1 line.
distributed actor BenchEchoActor {
    typealias ActorSystem = IntercomActorSystem

    distributed func echo(_ bytes: [UInt8]) -> [UInt8] { bytes }
}
