internal import IntercomTransport
internal import IntercomCore
internal import IntercomBus
public import ServiceLifecycle

/// A supervisor runs under swift-service-lifecycle: start its workers, put it in
/// a `ServiceGroup`, and a graceful shutdown (or cancellation) stops every worker
/// gracefully and waits until all are reaped.
extension Supervisor: Service {
    /// Keeps the workers running until a graceful shutdown or cancellation, then stops them all.
    public func run() async throws {
        do {
            try await gracefulShutdown()
        } catch {
            // Cancelled: stop the workers all the same.
        }
        // In a task of its own: stopping waits out grace periods, which a cancelled
        // task could not.
        await Task { await self.stopAll() }.value
    }
}
