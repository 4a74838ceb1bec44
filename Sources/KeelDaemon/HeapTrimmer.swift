import Glibc
import NIOConcurrencyHelpers

/// Hands the C heap's free pages back to the kernel once jobs go quiet.
///
/// Starting a guest or saving one allocates a few MiB that are freed when the job ends (parsed
/// XML, QMP replies, the capabilities), but glibc keeps freed pages in its arenas — one per
/// thread that allocated, and each QMP monitor has a reader thread — so an idle keeld would
/// stay as large as its busiest moment. One second after the last job, `malloc_trim` returns
/// those pages (about 1.6 MiB after starting 20 guests). Bursts of jobs cause one trim.
final class HeapTrimmer: Sendable {
    private let pending = NIOLockedValueBox(false)
    let delay: Duration

    init(delay: Duration = .seconds(1)) {
        self.delay = delay
    }

    /// Notes that a job ended; the heap is trimmed once `delay` passes without another trim pending.
    func jobEnded() {
        let schedule = pending.withLockedValue { pending in
            defer { pending = true }
            return !pending
        }
        guard schedule else { return }
        let delay = self.delay
        Task.detached(priority: .background) {
            try? await Task.sleep(for: delay)
            self.pending.withLockedValue { $0 = false }
            Self.trim()
        }
    }

    /// Returns the free pages of every arena now.
    static func trim() {
        _ = mallocTrim?(0)
    }

    /// glibc's `malloc_trim` (`<malloc.h>` is not part of the Glibc module); nil on a libc without it.
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    }()
}
