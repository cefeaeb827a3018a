@_spi(IntercomInternals) internal import IntercomTransport
internal import IntercomWire
internal import NIOCore
internal import DequeModule

/// Flow control of streams: a producer may send as many items as it was
/// granted. Every stream starts with ``initialCredit`` (no frame needed); the
/// consumer grants more, ``grantBatch`` at a time, as it takes items. So a
/// stream holds at most ``initialCredit`` items at the consumer whatever the
/// producer does (more is a protocol violation), and a producer whose consumer
/// stops reading is suspended.
enum StreamFlow {
    /// Items a producer may send before any `credit` frame (docs/PROTOCOL.md).
    static let initialCredit = 32
    /// The consumer grants credit in batches of this many items taken.
    static let grantBatch = 16
}

/// The consumer's side of one stream: the items that arrived (still encoded)
/// and how the stream ended. Items arrive on the connection's thread; the
/// iterator takes them on its own.
final class StreamInbox: Sendable {
    private struct State {
        var items = Deque<ByteBuffer>()
        var end: Result<Void, any Error>?
        var waiter: UnsafeContinuation<ByteBuffer?, any Error>?
        /// Taken since the last grant.
        var taken = 0
        /// Items arrived, and items the producer was allowed (the initial credit
        /// plus every grant): more arrivals than allowed break the protocol.
        var arrived = 0
        var allowed = StreamFlow.initialCredit
    }
    private let state = Locked(State())

    /// An item arrived; false if the producer exceeded its credit (so at most
    /// ``StreamFlow/initialCredit`` items ever wait here).
    func append(_ item: ByteBuffer) -> Bool {
        let (accepted, waiter) = self.state.withLock { state -> (Bool, UnsafeContinuation<ByteBuffer?, any Error>?) in
            state.arrived += 1
            guard state.arrived <= state.allowed else { return (false, nil) }
            if let waiter = state.waiter {
                state.waiter = nil
                return (true, waiter)
            }
            state.items.append(item)
            return (true, nil)
        }
        waiter?.resume(returning: item)
        return accepted
    }

    /// The stream ended (its reply or error arrived, or the call failed).
    func finish(_ end: Result<Void, any Error>) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<ByteBuffer?, any Error>? in
            if state.end == nil { state.end = end }
            defer { state.waiter = nil }
            return state.waiter
        }
        switch end {
        case .success: waiter?.resume(returning: nil)
        case .failure(let error): waiter?.resume(throwing: error)
        }
    }

    /// The next item (nil at the end), and how much credit to grant now (0: none).
    func next() async throws -> (item: ByteBuffer?, grant: Int) {
        let item: ByteBuffer? = try await withUnsafeThrowingContinuation { continuation in
            let now = self.state.withLock { state -> Result<ByteBuffer?, any Error>? in
                if let item = state.items.popFirst() { return .success(item) }
                switch state.end {
                case .success?: return .success(nil)
                case .failure(let error)?: return .failure(error)
                case nil:
                    state.waiter = continuation
                    return nil
                }
            }
            if let now { continuation.resume(with: now) }
        }
        guard item != nil else { return (nil, 0) }
        let grant = self.state.withLock { state -> Int in
            state.taken += 1
            guard state.taken >= StreamFlow.grantBatch, state.end == nil else { return 0 }
            defer { state.taken = 0 }
            state.allowed += state.taken
            return state.taken
        }
        return (item, grant)
    }
}

/// The producer's side of one stream: the credit it has, and a producer
/// suspended until it gets more.
final class StreamCredit: Sendable {
    private struct State {
        var available = StreamFlow.initialCredit
        var waiter: UnsafeContinuation<Void, any Error>?
        var ended: IntercomError?
    }
    private let state = Locked(State())
    /// Called (no lock held) when the producer starts or stops waiting.
    private let waitingChanged: @Sendable () -> Void

    init(waitingChanged: @escaping @Sendable () -> Void) {
        self.waitingChanged = waitingChanged
    }

    /// Whether the producer waits for credit now.
    var isWaiting: Bool { self.state.withLock { $0.waiter != nil } }

    /// The consumer granted `count` more items.
    func grant(_ count: Int) {
        let waiter = self.state.withLock { state -> UnsafeContinuation<Void, any Error>? in
            state.available += count
            guard let waiter = state.waiter else { return nil }
            // The waiting producer takes its item's credit now.
            state.available -= 1
            state.waiter = nil
            return waiter
        }
        guard let waiter else { return }
        self.waitingChanged()
        waiter.resume()
    }

    /// Takes one item's credit, waiting for the consumer if there is none.
    func acquire() async throws {
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let now = self.state.withLock { state -> Result<Void, any Error>? in
                    if let ended = state.ended { return .failure(ended) }
                    if state.available > 0 {
                        state.available -= 1
                        return .success(())
                    }
                    state.waiter = continuation
                    return nil
                }
                if let now { continuation.resume(with: now) } else { self.waitingChanged() }
            }
        } onCancel: {
            self.end(IntercomError(.cancelled, "the stream was cancelled"))
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

/// The streams of one connection, both ways, by call id.
struct StreamTable {
    /// Streams this side consumes (calls it made with the `stream` flag).
    var inboxes: [UInt64: StreamInbox] = [:]
    /// Streams this side produces (calls it received with the `stream` flag).
    var credits: [UInt64: StreamCredit] = [:]
}

extension Peer {
    /// A `streamItem` frame arrived: hand it to its stream (an item for a stream
    /// that already ended — cancelled here — is dropped).
    func deliverStreamItem(_ frame: borrowing Frame) {
        guard let inbox = self.streams.withLock({ $0.inboxes[frame.id] }) else { return }
        if !inbox.append(frame.payload) {
            self.violated(
                ProtocolError(.malformedHeader, "stream \(frame.id) sent more items than it was granted (\(StreamFlow.initialCredit) at most in flight)"))
        }
    }

    /// A `credit` frame arrived for a stream this side produces.
    func grantCredit(_ frame: borrowing Frame) {
        var payload = frame.payload
        guard payload.readableBytes == 4, let count = payload.readInteger(endianness: .little, as: UInt32.self), count > 0,
            count <= 1 << 20
        else {
            self.violated(ProtocolError(.malformedHeader, "a credit frame must carry one u32 count from 1 to 2^20"))
            return
        }
        self.streams.withLock { $0.credits[frame.id] }?.grant(Int(count))
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

    /// Ends every stream's producer when the connection ends (consumers end with their calls).
    func endStreams(_ reason: IntercomError) {
        let credits = self.streams.withLock { table -> [StreamCredit] in
            defer { table.credits.removeAll() }
            return Array(table.credits.values)
        }
        for credit in credits { credit.end(reason) }
    }

    func sendCredit(_ count: Int, for id: UInt64) {
        var frame = ByteBuffer()
        let mark = FrameHeader.begin(into: &frame, kind: .credit, id: id)
        frame.writeInteger(UInt32(count), endianness: .little)
        FrameHeader.finish(mark, in: &frame)
        self.transmit(frame)
    }
}
