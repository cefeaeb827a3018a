public import Intercom
internal import IntercomWire
internal import NIOCore
internal import NIOEmbedded

/// Two peers connected inside this process, with time that moves only when the
/// test says so and faults on demand: for testing a service's logic —
/// deadlines, cancellation, backpressure, what happens when the other side
/// vanishes — without processes, sockets or waiting.
///
/// The connection behaves like a socket (frames cross the real encoder and
/// decoder, after a real handshake), but runs on one event loop whose clock is
/// virtual: a 30-second timeout passes when the test calls
/// ``advanceTime(by:)``, at once and at the same point every run.
///
/// ```swift
/// let router = Router()
/// try router.register("slow") { (_: Int, context: CallContext) -> Int in
///     try await waitUntilCancelled()   // a handler that never answers
///     return 0
/// }
/// let connection = try await InMemoryConnection.open(second: router)
/// let call = Task { try await connection.first.call("slow", 1, returning: Int.self, timeout: .seconds(30)) }
/// await connection.settle()                  // the call is sent and its timer armed
/// await connection.advanceTime(by: .seconds(30))
/// // `call` now fails with `timeout`, and the handler was cancelled
/// await connection.close()
/// ```
///
/// Only what runs on the connection's loop follows virtual time: the library's
/// deadlines, timeouts and handshake. A handler's own `Task.sleep` uses the
/// system clock; wait on events or cancellation in handlers under test.
///
/// ``settle()`` finishes the work queued on the connection's loop. For state
/// that must be exact right after it (how many calls are pending, how many
/// handlers run), let the work run on that loop too: start callers with
/// `Task(executorPreference: connection.first.executor)` and serve with
/// `Peer.Configuration.handlerExecution = .connectionThread`; work on the
/// concurrency pool finishes in its own time.
public final class InMemoryConnection: Sendable {
    /// The end that opened the connection.
    public let first: Peer
    /// The other end.
    public let second: Peer

    /// One of the two ends, naming the direction of a fault by its sender.
    public enum Side: Sendable {
        /// ``InMemoryConnection/first``.
        case first
        /// ``InMemoryConnection/second``.
        case second
        var index: Int { self == .first ? 0 : 1 }
    }

    private let loop: NIOAsyncTestingEventLoop
    private let link: InMemoryLink

    private init(first: Peer, second: Peer, loop: NIOAsyncTestingEventLoop, link: InMemoryLink) {
        self.first = first
        self.second = second
        self.loop = loop
        self.link = link
    }

    /// Connects two peers in memory; each serves its router (if any).
    ///
    /// - Throws: ``IntercomError`` if the handshake fails (for example the two
    ///   configurations share no codec).
    public static func open(
        first firstRouter: Router? = nil, second secondRouter: Router? = nil,
        configuration: Peer.Configuration = Peer.Configuration(),
        secondConfiguration: Peer.Configuration? = nil
    ) async throws(IntercomError) -> InMemoryConnection {
        let loop = NIOAsyncTestingEventLoop()
        do {
            let (first, second, link) = try await Peer.inMemoryPair(
                on: loop, routers: (firstRouter, secondRouter),
                configurations: (configuration, secondConfiguration ?? configuration))
            return InMemoryConnection(first: first, second: second, loop: loop, link: link)
        } catch {
            await loop.shutdownGracefully()
            throw error
        }
    }

    /// Virtual time elapsed since the connection opened.
    public var elapsed: Duration { .nanoseconds(self.loop.now.uptimeNanoseconds) }

    /// Runs everything the connection has to do now (frames in flight,
    /// handlers started, timers due), without moving time.
    public func settle() async {
        await self.loop.run()
    }

    /// Moves virtual time forward, running each timer that falls due on the
    /// way (call and handler deadlines, the handshake timeout) at its moment.
    public func advanceTime(by duration: Duration) async {
        await self.loop.advanceTime(by: .nanoseconds(duration.nanosecondsClamped))
    }

    // MARK: Faults

    /// Holds back everything `sender` sends until ``resume(_:)``; past its
    /// outbound watermark its senders wait, as with a peer that stopped reading.
    public func stall(_ sender: Side) { self.link.stall(from: sender.index) }

    /// Delivers what a stall held back, and everything after it.
    public func resume(_ sender: Side) { self.link.resume(from: sender.index) }

    /// The next `count` frames `sender` sends are lost on the way (a reply that
    /// never comes, an event that never arrives).
    public func dropFrames(from sender: Side, count: Int = 1) { self.link.dropFrames(from: sender.index, count: count) }

    /// The next frame `sender` sends arrives with the byte at `offset` (from
    /// the frame's first byte; 0–19 are the header) flipped.
    public func corruptNextFrame(from sender: Side, at offset: Int) {
        self.link.corruptNextFrame(from: sender.index, at: offset)
    }

    /// Ends the connection as a crash or a pulled cable would: nothing in
    /// flight arrives, no goodbye; both peers see the connection lost.
    public func cut() async {
        self.link.cut()
        await self.settle()
    }

    /// Closes both peers and stops the connection's loop.
    public func close() async {
        await self.first.close()
        await self.second.close()
        await self.loop.shutdownGracefully()
    }
}
