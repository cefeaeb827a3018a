internal import NIOCore
internal import Synchronization

/// A `TaskExecutor` that runs jobs on one NIO event loop.
///
/// Tasks that prefer it (`Task(executorPreference:)`, `withTaskExecutorPreference`)
/// run on the same thread that reads and writes their connection, so a call
/// and its reply never hop between the event loop and the concurrency pool.
package final class EventLoopExecutor: TaskExecutor {
    let loop: any EventLoop

    private init(loop: any EventLoop) {
        self.loop = loop
    }

    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedTaskExecutor()
        self.loop.execute {
            job.runSynchronously(on: executor)
        }
    }

    private static let cache = Locked<[ObjectIdentifier: EventLoopExecutor]>([:])

    /// The one executor for `loop` (executors are shared by every connection on a loop).
    static func forLoop(_ loop: any EventLoop) -> EventLoopExecutor {
        self.cache.withLock { cache in
            let key = ObjectIdentifier(loop)
            if let existing = cache[key] { return existing }
            let executor = EventLoopExecutor(loop: loop)
            cache[key] = executor
            return executor
        }
    }
}
