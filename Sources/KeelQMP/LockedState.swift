import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a lock; the one place this module vouches for thread safety by hand.
final class LockedState<State>: @unchecked Sendable {
    // A pthread mutex rather than Foundation's NSLock keeps Foundation (and its start-up cost)
    // out of every process that links the QMP client.
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private var state: State

    init(_ state: State) {
        self.state = state
        lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    func withLock<Result, Failure: Swift.Error>(_ body: (inout State) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(&state)
    }
}

extension Duration {
    /// The duration for Dispatch, saturating at the largest representable interval.
    var dispatchInterval: DispatchTimeInterval {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return .nanoseconds(0) }
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return .never }
        let (total, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        guard !overflow2, let nanoseconds = Int(exactly: total) else { return .never }
        return .nanoseconds(nanoseconds)
    }
}
