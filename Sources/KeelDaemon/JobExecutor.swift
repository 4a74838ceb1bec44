import Dispatch

/// Where modifying jobs run: Dispatch's global queue, not Swift's cooperative pool.
///
/// A job's driver code blocks its thread: `fsync` of every state file it replaces, the
/// cross-process domain lock polled with `usleep`, QEMU's process start. On the cooperative
/// pool — one thread per core, two here — a few jobs blocked at once stall every query behind
/// them (dominfo's p99 under a storm of suspend/resume). Dispatch's global queue adds threads
/// while its threads block, so jobs wait on each other and queries never wait on a job.
final class JobExecutor: TaskExecutor {
    static let shared = JobExecutor()

    private let queue = DispatchQueue.global(qos: .userInitiated)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        queue.async {
            job.runSynchronously(on: executor)
        }
    }
}
