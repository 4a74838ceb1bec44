import Glibc

/// State files kept parsed in memory while their text is unchanged, for a long-lived process
/// (`keeld`) that reads the same definitions and status files on every query.
///
/// Every read still reads the file (a few KiB) and compares it byte for byte with the text the
/// kept value was parsed from; only parsing is saved, which is what costs. So whichever process
/// (this one, an embedded `keel`, another `keeld`) rewrote the file, and however quickly, the
/// value returned is the parse of what is on disk now. File identities (inode, times) are not
/// trusted for this: a rename-replaced file may get the freed inode back within one tick of
/// the coarse file clock.
public final class ParsedFileCache: @unchecked Sendable {
    private struct Entry {
        var text: [UInt8]
        var value: any Sendable
    }

    /// At most this many files are kept; beyond it the cache starts over (a state directory
    /// holds two files per domain, so this is only a bound against unbounded growth).
    public let capacity: Int
    private var entries: [String: Entry] = [:]
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private var hits = 0
    private var misses = 0

    public init(capacity: Int = 4096) {
        self.capacity = capacity
        lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// The parsed content of `path`: from memory when the file is the one parsed last time,
    /// else read and parsed by `parse` (which runs without the lock held).
    ///
    /// - Returns: nil when the file does not exist.
    /// - Throws: `QEMUError` `.io` when the file cannot be read; whatever `parse` throws (a
    ///   file that does not parse is not kept, so it is reported again on the next read).
    public func value<T: Sendable>(_ path: String, limit: Int = 64 << 20, parse: (String) throws -> T) throws -> T? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT {
                withLock { entries[path] = nil }
                return nil
            }
            throw QEMUError(.io, "cannot open \(path): \(errnoText())")
        }
        defer { close(fd) }
        let bytes = try POSIXFile.readAll(fd, path: path, limit: limit)
        if let cached: T = withLock({ () -> T? in
            guard let entry = entries[path], entry.text == bytes, let value = entry.value as? T else { return nil }
            hits += 1
            return value
        }) {
            return cached
        }
        let value = try parse(String(decoding: bytes, as: UTF8.self))
        withLock {
            misses += 1
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[path] = Entry(text: bytes, value: value)
        }
        return value
    }

    /// How many files are kept.
    public var count: Int { withLock { entries.count } }

    /// Reads answered from memory, and reads that parsed the file.
    public var statistics: (hits: Int, misses: Int) { withLock { (hits, misses) } }

    private func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body()
    }
}
