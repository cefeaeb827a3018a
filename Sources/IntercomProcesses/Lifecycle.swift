public import ServiceLifecycle

/// A supervisor runs under swift-service-lifecycle: put it in a `ServiceGroup`,
/// and a graceful shutdown (or cancellation) stops every worker by its teardown
/// and waits until all are reaped (see ``Supervisor/run()``).
extension Supervisor: Service {}
