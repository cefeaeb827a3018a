#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Intercom
@_spi(IntercomInternals) internal import IntercomTransport
#if canImport(Glibc)
import Glibc
#endif

/// The diagnostic service behind `intercom echo`: a service to try things out
/// and to test tools against.
///
/// Methods: `echo` (returns its JSON argument), `sleep` (waits the given number
/// of milliseconds, returns it), `fail` (throws an error with the given message),
/// `exit` (stops serving; the process exits with the code ``run(on:name:tickInterval:)``
/// returns), `count` (a stream of 0…N−1), `file` (a pipe's read end holding the given
/// text, as a ``UnixDescriptor``). Publishes a ``Tick`` on topic `tick` every second. Property
/// `greeting` (text, 1 to 100 characters, "hello" at first) can be read, set
/// and watched.
enum EchoService {
    /// What `tick` events carry.
    struct Tick: Codable, Sendable, Hashable {
        /// 1, 2, 3, … since the service started.
        public var count: Int
        /// When it was published.
        public var time: Date
    }

    /// What `file` returns: the text, and a pipe's read end it can be read from.
    struct EchoFile: Codable, Sendable {
        var text: String
        var file: UnixDescriptor

        /// A pipe's read end with `text` in it (its write end closed).
        static func pipe(holding text: String) throws -> UnixDescriptor {
            var ends: [Int32] = [-1, -1]
            guard Glibc.pipe(&ends) == 0 else { throw IntercomError(.invalidConfiguration, "pipe failed: errno \(errno)") }
            defer { close(ends[1]) }
            let bytes = Array(text.utf8.prefix(4096))  // fits a pipe's buffer: never blocks
            _ = bytes.withUnsafeBytes { write(ends[1], $0.baseAddress, $0.count) }
            return UnixDescriptor(taking: ends[0])
        }
    }

    /// The error `fail` throws.
    struct Failure: Error, Codable, Sendable, CustomStringConvertible {
        /// The message the caller gave.
        public var message: String
        /// The message.
        public var description: String { self.message }
    }

    /// Serves the echo service under `name` on `bus` until it is asked to quit
    /// (`intercom.quit`) or to exit, or the calling task is cancelled.
    ///
    /// - Parameter serving: called once the name is claimed and the service is
    ///   reachable (not before: a second claimant fails without it).
    /// - Returns: the exit status `exit` asked for, or 0 after a quit or cancellation.
    /// - Throws: as ``Bus/serve(_:router:replace:replaceTimeout:configuration:access:addresses:networkAccess:)``.
    /// - Parameters:
    ///   - addresses: network endpoints to serve on as well (`--listen`), with
    ///     `configuration`'s TLS settings, admitting whom `access` allows.
    static func run(
        on bus: Bus, name: String = "echo", tickInterval: Duration = .seconds(1),
        configuration: Peer.Configuration? = nil, addresses: [Endpoint] = [], access: AccessPolicy = AccessPolicy(),
        serving: @Sendable (BusService) -> Void = { _ in }
    ) async throws -> Int32 {
        let router = Router()
        let holder = EchoHolder()
        try router.register("echo") { (value: JSONValue, _: CallContext) in value }
        try router.register("sleep") { (milliseconds: Int, _: CallContext) -> Int in
            try await Task.sleep(for: .milliseconds(milliseconds))
            return milliseconds
        }
        try router.register("fail") { (message: String, _: CallContext) -> Bool in
            throw Failure(message: message)
        }
        // A stream: `count N` sends 0…N−1.
        try router.registerStream("count") { (n: Int, _: CallContext, stream: StreamWriter<Int>) in
            guard (0...1_000_000).contains(n) else {
                throw IntercomError(.invalidPayload, "count takes 0 to 1000000; got \(n)")
            }
            for i in 0..<n { try await stream.send(i) }
        }
        // Input streams: `sum` adds the numbers it is sent; `shout` sends back each text it gets in capitals.
        try router.registerClientStream("sum") { (_: JSONValue, numbers: StreamItems<Double>, _: CallContext) -> Double in
            try await numbers.reduce(0, +)
        }
        try router.registerBidirectionalStream("shout") {
            (_: JSONValue, lines: StreamItems<String>, _: CallContext, out: StreamWriter<String>) in
            for try await line in lines { try await out.send(line.uppercased()) }
        }
        // A descriptor in a reply: `file TEXT` hands over a pipe's read end with TEXT in it
        // (for Swift clients; `intercom call` shows the descriptor's index in the frame).
        try router.register("file") { (text: String, _: CallContext) -> EchoFile in
            EchoFile(text: text, file: try EchoFile.pipe(holding: text))
        }
        // A settable property: any non-empty text of at most 100 characters.
        try router.property("greeting", initial: "hello") { (greeting: String) in
            guard !greeting.isEmpty, greeting.count <= 100 else {
                throw IntercomError(.invalidPayload, "greeting must be 1 to 100 characters; got \(greeting.count)")
            }
        }
        try router.register("exit") { (code: Int32, context: CallContext) -> Bool in
            holder.exitCode.withLock { $0 = code }
            // The service may still be starting when the first call arrives: wait for it.
            context.afterReply { await holder.service.value.object?.close() }
            return true
        }
        let service = try await bus.serve(
            name, router: router, configuration: configuration, addresses: addresses, networkAccess: access)
        holder.service.set(WeakReference(service))
        serving(service)
        let ticker = Task {
            var count = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: tickInterval)
                count += 1
                _ = try? service.publish("tick", Tick(count: count, time: Date()))
            }
        }
        await withTaskCancellationHandler {
            await service.waitForQuit()
        } onCancel: {
            Task { await service.close() }
        }
        ticker.cancel()
        await service.close()
        return holder.exitCode.withLock { $0 }
    }
}

private final class EchoHolder: Sendable {
    let service = SetOnce<WeakReference<BusService>>()
    let exitCode = Locked<Int32>(0)
}
