public import IntercomTransport
internal import IntercomCore
/// What a broadcast reached.
public struct BroadcastReport<Reply: Sendable>: Sendable {
    /// Services that handled it, with their replies, by service name.
    public var replies: [String: Reply] = [:]
    /// Services that did not (no handler, failed, quitting, dead), with why.
    public var failures: [String: IntercomError] = [:]

    /// The services that received and handled the broadcast, sorted.
    public var received: [String] { self.replies.keys.sorted() }
}

extension Bus {
    /// Calls `method` on every live service on the bus at once and reports which
    /// handled it. Services that are quitting or dead are skipped, not waited on:
    /// each gets at most `timeout` (connection included).
    ///
    /// ```swift
    /// let report = try await bus.broadcast("intercom.quit", 0, returning: Bool.self)
    /// print("quit:", report.received)
    /// ```
    ///
    /// - Parameter only: restrict to services whose record lists `method` (skip the others silently).
    /// - Throws: ``IntercomError/Code/permissionDenied`` if the bus directory is unsafe.
    public func broadcast<Message: Encodable & Sendable, Reply: Decodable & Sendable>(
        _ method: String, _ message: Message, returning: Reply.Type = Reply.self,
        timeout: Duration = .seconds(2), onlyServicesHandlingIt only: Bool = false
    ) async throws(IntercomError) -> BroadcastReport<Reply> {
        let targets = try self.services().filter { !only || $0.methods.contains(method) }
        return await self.onEachService(targets.map(\.name), timeout: timeout) { peer in
            try await peer.call(method, message, returning: Reply.self, timeout: timeout)
        }
    }

    /// Pings every live service on the bus at once (IPC::Manager's sanity
    /// check): who answered, and each round trip on a fresh connection; who did
    /// not, and why. Each gets at most `timeout` (connection included).
    ///
    /// ```swift
    /// let report = try await bus.pingServices()
    /// for (name, rtt) in report.replies { print(name, rtt) }
    /// ```
    ///
    /// - Throws: ``IntercomError/Code/permissionDenied`` if the bus directory is unsafe.
    public func pingServices(timeout: Duration = .seconds(2)) async throws(IntercomError) -> BroadcastReport<Duration> {
        let targets = try self.services().map(\.name)
        return await self.onEachService(targets, timeout: timeout) { peer in try await peer.ping(timeout: timeout) }
    }

    /// Connects to each of `targets` at once, runs `body` on the connection and
    /// closes it; reports each result or failure by service name.
    private func onEachService<Reply: Sendable>(
        _ targets: [String], timeout: Duration, _ body: @escaping @Sendable (Peer) async throws -> Reply
    ) async -> BroadcastReport<Reply> {
        await withTaskGroup(of: (String, Result<Reply, IntercomError>).self) { group in
            for target in targets {
                group.addTask {
                    var configuration = Peer.Configuration()
                    configuration.handshakeTimeout = timeout
                    let peer: Peer
                    do throws(IntercomError) {
                        peer = try await self.connect(to: target, configuration: configuration)
                    } catch {
                        return (target, .failure(error))
                    }
                    let result: Result<Reply, IntercomError>
                    do {
                        result = .success(try await body(peer))
                    } catch let error as IntercomError {
                        result = .failure(error)
                    } catch {
                        result = .failure(IntercomError(.remote, "\(error)"))
                    }
                    await peer.close()
                    return (target, result)
                }
            }
            var report = BroadcastReport<Reply>()
            for await (name, result) in group {
                switch result {
                case .success(let reply): report.replies[name] = reply
                case .failure(let error): report.failures[name] = error
                }
            }
            return report
        }
    }
}
