internal import IntercomTransport
internal import IntercomCore
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
