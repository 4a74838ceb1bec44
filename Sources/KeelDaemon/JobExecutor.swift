import Glibc

/// Where modifying jobs run: a few threads of their own, not Swift's cooperative pool.
///
/// A job's driver code blocks its thread: `fsync` of every state file it replaces, the
/// cross-process domain lock polled with `usleep`, QEMU's process start. On the cooperative
/// pool — one thread per core, two here — two jobs blocked at once stall every query behind
/// them. Here jobs take turns on `threads` threads of their own, so queries keep the pool; and
/// jobs of many domains do not run all at once either (measured: an unbounded pool let 20
/// guests' suspend/resume take both cores from the queries).
final class JobExecutor: TaskExecutor, @unchecked Sendable {
    static let shared = JobExecutor(threads: 2)

    // Guarded by `mutex`; `condition` signals a new job.
    private var jobs: [UnownedJob] = []
    private var head = 0
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init(threads: Int) {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        for _ in 0..<max(1, threads) {
            let body = Unmanaged.passRetained(self).toOpaque()
            var thread = pthread_t()
            let started = pthread_create(&thread, nil, { argument in
                guard let argument else { return nil }
                Unmanaged<JobExecutor>.fromOpaque(argument).takeRetainedValue().work()
                return nil
            }, body)
            if started == 0 {
                pthread_detach(thread)
            } else {
                Unmanaged<JobExecutor>.fromOpaque(body).release()
            }
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(mutex)
        jobs.append(job)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// One thread's loop: the oldest job first, forever (the executor lives as long as keeld).
    private func work() {
        let executor = asUnownedTaskExecutor()
        while true {
            pthread_mutex_lock(mutex)
            while head == jobs.count { pthread_cond_wait(condition, mutex) }
            let job = jobs[head]
            head += 1
            if head > 1024, head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(mutex)
            job.runSynchronously(on: executor)
        }
    }
}
