public import ServiceLifecycle

/// A bus service runs under swift-service-lifecycle: put it in a `ServiceGroup`
/// with `gracefulShutdownSignals: [.sigterm, .sigint]` and SIGTERM/SIGINT stop
/// it cleanly (connections closed, its files removed, its name given up).
///
/// ```swift
/// let camera = try await Bus().serve("camera", router: router)
/// let group = ServiceGroup(services: [camera], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
extension BusService: Service {
    /// Serves until a graceful shutdown, a cancellation or `intercom.quit`, then closes.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await self.waitForQuit()
            } onCancel: {
                Task { await self.close() }
            }
        } onGracefulShutdown: {
            Task { await self.close() }
        }
        await self.close()
    }
}

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
