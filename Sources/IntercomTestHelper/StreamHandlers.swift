import Intercom
@_spi(IntercomInternals) import IntercomTransport
import Synchronization

/// The streaming methods the stream tests call:
/// - `count` N: the items 0…N−1;
/// - `count.batched` N: "item k xxx…" for k in 0…N−1, sent 500 at a time with `send(contentsOf:)`;
/// - `chunks.batched` [sizes]: byte chunks of those sizes (chunk k filled with
///   k), with `send(contentsOf:)` from an array, then again from a lazy sequence;
/// - `count.failing` N: N items, then `HelperError.refused("midstream", 7)`;
/// - `count.forever`: [0, 0, …], [1, 1, …], … (128 copies each, so the window
///   fills after about a thousand items) until cancelled (then counts the cancellation);
/// - `streams.blocked`: once a `count.forever` producer waits for credit, how
///   many items it had sent;
/// - `streams.cancelled` N: once N `count.forever` producers saw their
///   cancellation, how many did.
func registerStreamHandlers(on router: Router) throws {
    let sent = Atomic<Int>(0)
    let cancellations = CountLatch()
    try router.registerStream("count") { (n: Int, _: CallContext, stream: StreamWriter<Int>) in
        for i in 0..<n { try await stream.send(i) }
    }
    try router.registerStream("count.batched") { (n: Int, _: CallContext, stream: StreamWriter<String>) in
        // Items of about 40 bytes, 500 per send(contentsOf:): batches cross the credit window.
        var next = 0
        while next < n {
            let batch = (next..<min(n, next + 500)).map { "item \($0) " + String(repeating: "x", count: 30) }
            try await stream.send(contentsOf: batch)
            next += batch.count
        }
    }
    try router.registerStream("chunks.batched") { (sizes: [Int], _: CallContext, stream: StreamWriter<[UInt8]>) in
        // Byte chunks of the given sizes, filled with their index: first from an
        // array, then the same again from a sequence with no contiguous storage.
        let chunks = sizes.enumerated().map { [UInt8](repeating: UInt8(truncatingIfNeeded: $0.offset), count: $0.element) }
        try await stream.send(contentsOf: chunks)
        try await stream.send(contentsOf: sizes.indices.lazy.map { chunks[$0] })
    }
    try router.registerStream("count.failing") { (n: Int, _: CallContext, stream: StreamWriter<Int>) in
        for i in 0..<n { try await stream.send(i) }
        throw HelperError.refused(reason: "midstream", code: 7)
    }
    try router.registerStream("count.forever") { (_: Int, _: CallContext, stream: StreamWriter<[Int]>) in
        sent.store(0, ordering: .relaxed)
        var i = 0
        do {
            while true {
                try await stream.send([Int](repeating: i, count: 128))
                i += 1
                sent.store(i, ordering: .relaxed)
            }
        } catch {
            cancellations.increment()
            throw error
        }
    }
    try router.register("streams.blocked") { (_: Int, context: CallContext) -> Int in
        let blocked = await context.peer.waitForStatistics(timeout: .seconds(30)) { $0.streamsAwaitingCredit >= 1 }
        return blocked ? sent.load(ordering: .relaxed) : -1
    }
    try router.register("streams.cancelled") { (n: Int, _: CallContext) -> Int in
        await cancellations.wait(until: n)
    }
    try registerInputStreamHandlers(on: router)
}

/// The input-streaming methods:
/// - `sum` (client stream of Int): their sum;
/// - `sum.first` N (client stream of Int): the sum of the first N items, then it answers;
/// - `sum.failing` N: reads N items, then throws `HelperError.refused("input", N)`;
/// - `input.held` (client stream of String): reads one item, waits for
///   `input.release`, reads the rest; answers how many it read;
/// - `input.cancelled` N: once N input readers saw their cancellation, how many did;
/// - `upper` (bidirectional, String → String): each item uppercased;
/// - `echo.items` (bidirectional, String → String): each item back.
private func registerInputStreamHandlers(on router: Router) throws {
    let cancellations = CountLatch()
    let release = CountLatch()
    /// Reads `items` to their end (or `limit` of them), counting a cancellation.
    @Sendable func reading<Item>(_ items: StreamItems<Item>, limit: Int = .max, _ each: (Item) async throws -> Void) async throws {
        var count = 0
        do {
            for try await item in items {
                try await each(item)
                count += 1
                if count == limit { return }
            }
        } catch {
            if (error as? IntercomError)?.code == .cancelled || error is CancellationError { cancellations.increment() }
            throw error
        }
    }
    try router.registerClientStream("sum") { (_: Int, items: StreamItems<Int>, _: CallContext) -> Int in
        var sum = 0
        try await reading(items) { sum += $0 }
        return sum
    }
    try router.registerClientStream("sum.first") { (n: Int, items: StreamItems<Int>, _: CallContext) -> Int in
        var sum = 0
        try await reading(items, limit: n) { sum += $0 }
        return sum
    }
    try router.registerClientStream("sum.failing") { (n: Int, items: StreamItems<Int>, _: CallContext) -> Int in
        try await reading(items, limit: n) { _ in }
        throw HelperError.refused(reason: "input", code: n)
    }
    try router.registerClientStream("input.held") { (_: Int, items: StreamItems<String>, _: CallContext) -> Int in
        var iterator = items.makeAsyncIterator()
        guard try await iterator.next() != nil else { return 0 }
        _ = await release.wait(until: 1)
        var count = 1
        while try await iterator.next() != nil { count += 1 }
        return count
    }
    try router.register("input.release") { (_: Int, _: CallContext) in release.increment() }
    try router.register("input.cancelled") { (n: Int, _: CallContext) -> Int in
        await cancellations.wait(until: n)
    }
    try router.registerBidirectionalStream("upper") {
        (_: Int, lines: StreamItems<String>, _: CallContext, out: StreamWriter<String>) in
        try await reading(lines) { try await out.send($0.uppercased()) }
    }
    try router.registerBidirectionalStream("echo.items") {
        (_: Int, items: StreamItems<String>, _: CallContext, out: StreamWriter<String>) in
        try await reading(items) { try await out.send($0) }
    }
}

/// A count that tasks can wait on reaching a value. (`Locked`, not `Mutex`:
/// ThreadSanitizer does not model `Mutex`'s futex and reported it.)
final class CountLatch: Sendable {
    private let state = Locked<(count: Int, waiters: [(Int, CheckedContinuation<Int, Never>)])>((0, []))

    func increment() {
        let ready = self.state.withLock { state -> [(CheckedContinuation<Int, Never>, Int)] in
            state.count += 1
            let count = state.count
            let ready = state.waiters.filter { $0.0 <= count }.map { ($0.1, count) }
            state.waiters.removeAll { $0.0 <= count }
            return ready
        }
        for (waiter, count) in ready { waiter.resume(returning: count) }
    }

    func wait(until target: Int) async -> Int {
        await withCheckedContinuation { continuation in
            let now = self.state.withLock { state -> Int? in
                if state.count >= target { return state.count }
                state.waiters.append((target, continuation))
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}
