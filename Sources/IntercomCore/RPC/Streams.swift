@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import DequeModule

/// Flow control of streams, in bytes of item payload: a producer may start an
/// item while it has credit left (the item may overdraw it). Every stream starts
/// with ``initialWindow`` (no frame needed); the consumer grants back the bytes
/// it took, ``grantThreshold`` or more at a time. So a consumer holds at most the
/// window plus one item whatever the producer does (more is a protocol
/// violation), and a producer whose consumer stops reading is suspended. Bytes,
/// not items: small items flow many to a round trip, large ones stay bounded.
enum StreamFlow {
    /// Payload bytes a producer may send before any `credit` frame (docs/PROTOCOL.md).
    static let initialWindow = 256 << 10
    /// The consumer grants credit once it took this many bytes since its last grant.
    static let grantThreshold = 128 << 10
}

/// One item of a stream as it arrived: still encoded, with the descriptors that came with it.
@usableFromInline
struct StreamItem: Sendable {
    var payload: ByteBuffer
    var descriptors: ReceivedDescriptors?
}

/// The consumer's side of one stream: the items that arrived (still encoded)
/// and how the stream ended. Items arrive on the connection's thread; the
/// iterator takes all that are here at once, under one lock, into its
/// ``StreamCursor``, and grants credit as it hands them out.
final class StreamInbox: Sendable {
    private struct State {
        var items: [StreamItem] = []
        var end: Result<Void, any Error>?
        /// The consumer, waiting for an item or the end.
        var waiter: UnsafeContinuation<Void, Never>?
        /// Bytes arrived, and bytes the producer was allowed (the initial window
        /// plus every grant): an item that starts past the allowance breaks the protocol.
        var arrived = 0
        var allowed = StreamFlow.initialWindow
    }
    private let state = Locked(State())

    /// Items arrived together, in order; false if the producer had no credit left
    /// for one of them (those before it are kept, it and the rest are not), so
    /// at most the window and one item ever wait here or in the consumer's cursor.
    func append(contentsOf run: [StreamItem]) -> Bool {
        var accepted = true
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            for item in run {
                guard state.arrived < state.allowed else {
                    accepted = false
                    break
                }
                state.arrived += item.payload.readableBytes
                state.items.append(item)
            }
            guard !state.items.isEmpty else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
        return accepted
    }

    /// The stream ended (its reply or error arrived, or the call failed).
    func finish(_ end: Result<Void, any Error>) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, Never>? in
            if state.end == nil { state.end = end }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// What ``take(into:)`` found.
    enum Taken {
        /// Items: now in the cursor.
        case items
        /// No item, and the stream ended so.
        case ended(Result<Void, any Error>)
        /// No item yet: ``wait()`` for one.
        case nothingYet
    }

    /// Moves every item here into `ready` (empty: the consumer handed out all it
    /// had), under one lock and without copying: the two arrays swap.
    func take(into ready: inout [StreamItem]) -> Taken {
        self.state.withLock { state in
            if !state.items.isEmpty {
                swap(&ready, &state.items)
                return .items
            }
            return state.end.map { .ended($0) } ?? .nothingYet
        }
    }

    /// Returns once an item is here or the stream ended.
    func wait() async {
        await withUnsafeContinuation { continuation in
            let now = self.state.withLock { state -> Bool in
                guard state.items.isEmpty, state.end == nil else { return true }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }

    /// Allows the producer `bytes` more (the consumer handed that many out);
    /// false once the stream ended (no credit frame then).
    func grant(_ bytes: Int) -> Bool {
        self.state.withLock { state in
            guard state.end == nil else { return false }
            state.allowed += bytes
            return true
        }
    }
}

/// The producer's side of one stream: the credit it has, and a producer
/// suspended until it gets more.
final class StreamCredit: Sendable {
    private struct State {
        /// Bytes the producer may still start items with (it may go below zero).
        var available: Int
        /// Whether the consumer ever granted credit (an output stream starts with
        /// the initial window; an input stream waits for its callee's first grant).
        var opened: Bool
        var waiter: UnsafeContinuation<Void, any Error>?
        var ended: IntercomError?
        /// The size of the item the waiting producer wants to send.
        var waitingFor = 0
    }
    private let state: Locked<State>
    /// Called (no lock held) when the producer starts or stops waiting.
    private let waitingChanged: @Sendable () -> Void

    /// `initial`: the credit the producer starts with (an input stream's is 0:
    /// the callee opens it when its handler starts).
    init(initial: Int = StreamFlow.initialWindow, waitingChanged: @escaping @Sendable () -> Void) {
        self.state = Locked(State(available: initial, opened: initial > 0))
        self.waitingChanged = waitingChanged
    }

    /// Whether the producer waits for credit now.
    var isWaiting: Bool { self.state.withLock { $0.waiter != nil } }

    /// The consumer granted `count` more bytes.
    func grant(_ count: Int) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
            state.available += count
            state.opened = true
            guard state.available > 0, let waiter = state.waiter else { return nil }
            // The waiting producer takes its item's bytes now.
            state.available -= state.waitingFor
            state.waiter = nil
            return waiter
        }
        guard let waiter else { return }
        self.waitingChanged()
        waiter.resume()
    }

    /// Takes an item's bytes of credit, waiting for the consumer while there is none.
    /// `acquire(0)` waits only until the stream is open (its end may follow then).
    nonisolated(nonsending) func acquire(_ bytes: Int) async throws {
        // The common case: credit left, no suspension.
        let taken = self.state.withLock { state -> Bool in
            guard state.ended == nil, state.available > 0 || (bytes == 0 && state.opened) else { return false }
            state.available -= bytes
            return true
        }
        if taken { return }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let now = self.state.withLock { state -> Result<Void, any Error>? in
                    if let ended = state.ended { return .failure(ended) }
                    if state.available > 0 || (bytes == 0 && state.opened) {
                        state.available -= bytes
                        return .success(())
                    }
                    state.waitingFor = bytes
                    state.waiter = continuation
                    return nil
                }
                if let now { continuation.resume(with: now) } else { self.waitingChanged() }
            }
        } onCancel: {
            self.end(IntercomError(.cancelled, "the stream was cancelled"))
        }
    }

    /// The producer finished: later items are refused. False if it had ended already.
    func finish() -> Bool {
        let (finished, waiter) = self.state.withLock { state -> (Bool, UnsafeContinuation<Void, any Error>?) in
            guard state.ended == nil else { return (false, nil) }
            state.ended = IntercomError(.closed, "the stream was finished; no more items can be sent")
            defer { state.waiter = nil }
            return (true, state.waiter)
        }
        waiter?.resume(throwing: IntercomError(.closed, "the stream was finished; no more items can be sent"))
        return finished
    }

    /// Takes credit for as many of the items (their payload sizes, in order) as
    /// it covers now — each may start while credit is above zero — waiting for
    /// the consumer while it covers none. Returns how many (at least one).
    nonisolated(nonsending) func acquire(upTo sizes: ArraySlice<Int>) async throws -> Int {
        var taken = self.take(upTo: sizes)
        if taken > 0 { return taken }
        try await self.acquire(sizes.first!)
        taken = 1 + self.take(upTo: sizes.dropFirst())
        return taken
    }

    /// Takes credit for the leading items it covers now; how many (0: none).
    private func take(upTo sizes: ArraySlice<Int>) -> Int {
        self.state.withLock { state in
            guard state.ended == nil else { return 0 }
            var count = 0
            for size in sizes {
                guard state.available > 0 else { break }
                state.available -= size
                count += 1
            }
            return count
        }
    }

    /// No more items will be taken (cancelled, or the connection ended).
    func end(_ reason: IntercomError) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
            if state.ended == nil { state.ended = reason }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(throwing: reason)
    }
}

/// The streams of one connection, both ways, by call id. A call's output stream
/// (callee → caller) and its input stream (caller → callee, flag `inputStream`
/// on its frames) are kept apart: the ids of calls this side made and of calls
/// it received are counted by different sides and may be equal.
struct StreamTable {
    /// Output streams this side consumes (calls it made with the `stream` flag).
    var inboxes: [UInt64: StreamInbox] = [:]
    /// Output streams this side produces (calls it received with the `stream` flag).
    var credits: [UInt64: StreamCredit] = [:]
    /// Input streams this side consumes (calls it received, while their handlers run).
    var inputs: [UInt64: StreamInbox] = [:]
    /// Input streams this side produces (calls it made with the `inputStream` flag).
    var inputCredits: [UInt64: StreamCredit] = [:]
}

/// Items of one stream that arrived in consecutive frames of one read, not yet
/// handed to its inbox (``Arrivals/streamItems``).
struct StreamItemRun {
    var id: UInt64 = 0
    var input = false
    var items: [StreamItem] = []
}

extension Peer {
    /// A `streamItem` frame arrived: collect it with the run of its stream's
    /// items in this read; a frame of another stream — or any other frame, or
    /// the end of the read — hands the run over first (so items still come
    /// before their stream's end, and in order).
    func collectStreamItem(_ frame: borrowing Frame) {
        let run = self.arrivals.streamItems
        let input = frame.flags.contains(.inputStream)
        if !run.pointee.items.isEmpty, run.pointee.id != frame.id || run.pointee.input != input {
            self.deliverStreamItems()
        }
        run.pointee.id = frame.id
        run.pointee.input = input
        run.pointee.items.append(StreamItem(payload: frame.payload, descriptors: frame.descriptors))
    }

    /// Hands the collected run to its stream (dropped if the stream already
    /// ended — cancelled here). On the transport's thread.
    func deliverStreamItems() {
        let run = self.arrivals.streamItems
        guard !run.pointee.items.isEmpty else { return }
        var items: [StreamItem] = []
        swap(&items, &run.pointee.items)
        let (id, input) = (run.pointee.id, run.pointee.input)
        guard let inbox = self.streams.withLock({ input ? $0.inputs[id] : $0.inboxes[id] }) else { return }
        if !inbox.append(contentsOf: items) {
            self.violated(
                ProtocolError(
                    .malformedHeader,
                    "stream \(id) sent more items than it was granted (\(StreamFlow.initialWindow) bytes in flight at most)"))
        }
    }

    /// A `credit` frame arrived for a stream this side produces.
    func grantCredit(_ frame: borrowing Frame) {
        var payload = frame.payload
        guard payload.readableBytes == 4, let count = payload.readInteger(endianness: .little, as: UInt32.self), count > 0,
            count <= 1 << 30
        else {
            self.violated(ProtocolError(.malformedHeader, "a credit frame must carry one u32 byte count from 1 to 2^30"))
            return
        }
        let input = frame.flags.contains(.inputStream)
        self.streams.withLock { input ? $0.inputCredits[frame.id] : $0.credits[frame.id] }?.grant(Int(count))
    }

    /// A streaming handler starts: its producer has the initial credit. (If the
    /// connection already ended, the credit ends at once.)
    func streamStarted(_ id: UInt64) -> StreamCredit {
        let credit = StreamCredit { [weak self] in self?.statisticsChanged() }
        self.streams.withLock { $0.credits[id] = credit }
        if let ended = self.withState({ $0.endReason }) { credit.end(ended) }
        return credit
    }

    /// A streaming handler ended.
    func streamEnded(_ id: UInt64) {
        _ = self.streams.withLock { $0.credits.removeValue(forKey: id) }
    }

    /// Ends every stream's producer, and the input streams handlers read, when the
    /// connection ends (the consumers of output streams end with their calls).
    func endStreams(_ reason: IntercomError) {
        let (credits, inputs) = self.streams.withLock { table -> ([StreamCredit], [StreamInbox]) in
            defer {
                table.credits.removeAll()
                table.inputCredits.removeAll()
                table.inputs.removeAll()
            }
            return (Array(table.credits.values) + Array(table.inputCredits.values), Array(table.inputs.values))
        }
        for credit in credits { credit.end(reason) }
        for input in inputs { input.finish(.failure(reason)) }
    }

    /// Grants `count` more bytes to the producer of stream `id` (`flags`:
    /// `inputStream` for a call's input, which this side consumes as its callee).
    func sendCredit(_ count: Int, for id: UInt64, flags: FrameFlags = []) {
        var frame = ByteBuffer()
        let mark = FrameHeader.begin(into: &frame, kind: .credit, flags: flags, id: id)
        frame.writeInteger(UInt32(count), endianness: .little)
        FrameHeader.finish(mark, in: &frame)
        self.transmit(frame)
    }
}
