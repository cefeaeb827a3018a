public import IntercomTransport

// Waiting for a message without taking it: on one peer (ductworks' `poll`) and
// on many at once (IPC::Manager's waiting on many handles, select(2) over peers).
extension Peer {
    /// Whether an unsolicited message waits in the inbox now. Never takes it
    /// and never waits.
    public var hasWaitingMessage: Bool {
        self.inbox.hasQueuedMessage
    }

    /// Waits until an unsolicited message waits in the inbox, without taking
    /// it: the next `receive…` gets it (unless another task takes it first).
    ///
    /// ```swift
    /// if try await peer.waitForMessage(timeout: .seconds(1)) {
    ///     let reading = try await peer.receive(as: Reading.self)
    /// }
    /// ```
    ///
    /// - Returns: true once a message waits; false if none came within `timeout`.
    /// - Throws: ``IntercomError`` `peerLost` (or `closed`) once the connection
    ///   has ended and every message that arrived before has been taken;
    ///   `cancelled` if the waiting task is cancelled.
    public func waitForMessage(timeout: Duration) async throws(IntercomError) -> Bool {
        try await self.inbox.waitUntilQueued(timeout: timeout)
    }

    /// A descriptor that is readable while an unsolicited message waits in the
    /// inbox, and once the connection has ended: for code that multiplexes with
    /// `select`, `poll` or `epoll` (ductworks' readiness). The same for every
    /// transport (an eventfd): a readable socket would not say that a whole
    /// message is there, and shared memory has no socket to watch.
    ///
    /// ```swift
    /// var entry = pollfd(fd: try peer.messageReadinessDescriptor(), events: Int16(POLLIN), revents: 0)
    /// if poll(&entry, 1, 1000) > 0, let message = try peer.pollMessage() { … }
    /// ```
    ///
    /// Made on the first call (the same one after); it stays open as long as
    /// the peer exists. Only watch it: never read, write or close it.
    ///
    /// - Throws: ``IntercomError/Code/busy`` if no descriptor can be made (the
    ///   process is out of descriptors, or the platform has no eventfd).
    public func messageReadinessDescriptor() throws(IntercomError) -> Int32 {
        try self.inbox.readinessDescriptor()
    }

    /// Waits until one of `peers` has an unsolicited message waiting — or its
    /// connection has ended, so that receiving from it says why — without taking
    /// anything.
    ///
    /// ```swift
    /// while let ready = try await Peer.firstWithMessage(among: workers, timeout: .seconds(5)) {
    ///     let result = try await ready.receive(as: Result.self)
    /// }
    /// ```
    ///
    /// To wait for the first *reply* of several calls, start them in a task group.
    ///
    /// - Returns: the first peer found ready (in the order of `peers` among those
    ///   ready at once); nil if none was within `timeout`.
    /// - Throws: ``IntercomError`` `cancelled` if the waiting task is cancelled.
    public static func firstWithMessage(among peers: [Peer], timeout: Duration) async throws(IntercomError) -> Peer? {
        if let ready = peers.first(where: { $0.inbox.isReady }) { return ready }
        guard !peers.isEmpty else { return nil }
        let first = await withTaskGroup(of: Peer?.self) { group -> Peer? in
            for peer in peers {
                group.addTask {
                    do throws(IntercomError) {
                        return try await peer.waitForMessage(timeout: timeout) ? peer : nil
                    } catch {
                        // Cancelled: another peer was first. Else it ended: receiving from it throws why.
                        return error.code == .cancelled ? nil : peer
                    }
                }
            }
            for await ready in group {
                if let ready {
                    group.cancelAll()
                    return ready
                }
            }
            return nil
        }
        if first == nil, Task.isCancelled { throw IntercomError(.cancelled, "waiting for a message was cancelled") }
        return first
    }
}
