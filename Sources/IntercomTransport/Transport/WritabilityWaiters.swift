/// Whether a transport takes more bytes now, as seen under its own lock.
package enum Writability {
    case writable
    case full
    case closed(IntercomError)
}

/// The senders suspended in ``FrameTransport/waitUntilWritable()``; kept inside
/// each transport's locked state, next to what decides its ``Writability``.
package struct WritabilityWaiters {
    private var nextID: UInt64 = 0
    private var waiters: [UInt64: UnsafeContinuation<Void, any Error>] = [:]

    /// How many senders wait.
    var count: Int { self.waiters.count }

    fileprivate mutating func makeID() -> UInt64 {
        self.nextID += 1
        return self.nextID
    }

    fileprivate mutating func add(_ id: UInt64, _ continuation: UnsafeContinuation<Void, any Error>) {
        self.waiters[id] = continuation
    }

    fileprivate mutating func remove(_ id: UInt64) -> UnsafeContinuation<Void, any Error>? {
        self.waiters.removeValue(forKey: id)
    }

    /// Takes every waiter out (to resume them once the lock is released).
    mutating func takeAll() -> [UnsafeContinuation<Void, any Error>] {
        defer { self.waiters.removeAll() }
        return Array(self.waiters.values)
    }
}

/// A transport whose senders can wait for room: it gives its writability and
/// waiter table under its lock, and gets `waitUntilWritable()` from this protocol.
package protocol WritabilityWaiting: AnyObject, Sendable {
    /// Runs `body` under the transport's lock with its writability and waiters.
    func withWritability<R, E: Error>(_ body: (Writability, inout WritabilityWaiters) throws(E) -> R) throws(E) -> R
    /// Told when a sender starts or stops waiting (see `observeBlockedSenders`).
    var blockedSendersObserver: SetOnce<@Sendable () -> Void> { get }
}

extension WritabilityWaiting {
    package func observeBlockedSenders(_ observer: @escaping @Sendable () -> Void) {
        self.blockedSendersObserver.set(observer)
    }

    /// Returns when the transport is writable; throws its close error if it
    /// closes first, `cancelled` if the waiting task is cancelled.
    func suspendUntilWritable() async throws(IntercomError) {
        let id = try self.withWritability { writability, waiters throws(IntercomError) -> UInt64? in
            switch writability {
            case .writable: return nil
            case .closed(let error): throw error
            case .full: return waiters.makeID()
            }
        }
        guard let id else { return }
        let cancelled = IntercomError(.cancelled, "cancelled while waiting for the peer to read")
        defer { self.blockedSendersObserver.current?() }  // it stopped waiting
        do {
            try await withTaskCancellationHandler {
                try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                    let outcome = self.withWritability { writability, waiters -> Result<Void, IntercomError>? in
                        switch writability {
                        case .writable: return .success(())
                        case .closed(let error): return .failure(error)
                        case .full:
                            if Task.isCancelled { return .failure(cancelled) }
                            waiters.add(id, continuation)
                            return nil
                        }
                    }
                    if let outcome {
                        continuation.resume(with: outcome)
                    } else {
                        self.blockedSendersObserver.current?()  // it waits
                    }
                }
            } onCancel: {
                self.withWritability { _, waiters in waiters.remove(id) }?.resume(throwing: cancelled)
            }
        } catch let error as IntercomError {
            throw error
        } catch {
            throw IntercomError(.cancelled, "\(error)")
        }
    }
}
