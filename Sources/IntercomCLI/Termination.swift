import UnixSignals

/// Runs `body` until it returns, or until SIGTERM or SIGINT arrives: then cancels
/// it and waits for it to finish cleaning up (a service gives up its name and
/// removes its files), and returns what it returned.
func untilTerminated<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            for await _ in signals { return nil }
            return nil  // cancelled: the body finished first
        }
        while let outcome = try await group.next() {
            if let value = outcome {
                group.cancelAll()
                return value
            }
            // A signal: stop the body and wait for what it returns.
            group.cancelAll()
        }
        throw CancellationError()
    }
}
