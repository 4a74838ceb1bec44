import Glibc

/// State files kept parsed in memory while the file on disk is unchanged, for a long-lived
/// process (`keeld`) that reads the same definitions and status files on every query.
///
/// An entry is identified by the file's device, inode, size and modification and change times
/// (nanoseconds), taken with `fstat` on the descriptor the text is read from, so the identity
/// and the parsed text always belong together. Every writer replaces state files by rename
/// (`POSIXFile.writeAtomically`), which gives the file a new inode, so an entry is reused only
/// while the very file it was parsed from is in place — whichever process (this one, an
/// embedded `keel`, another `keeld`) writes the state directory. Nothing needs invalidating.
public final class ParsedFileCache: @unchecked Sendable {
    /// What identifies one version of a file.
    struct Identity: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: timespec
        var changed: timespec

        init(_ info: stat) {
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
            modified = info.st_mtim
            changed = info.st_ctim
        }

        static func == (a: Identity, b: Identity) -> Bool {
            a.device == b.device && a.inode == b.inode && a.size == b.size
                && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
                && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
        }
    }

    private struct Entry {
        var identity: Identity
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
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw QEMUError(.io, "cannot stat \(path): \(errnoText())") }
        let identity = Identity(info)
        if let cached: T = withLock({ () -> T? in
            guard let entry = entries[path], entry.identity == identity, let value = entry.value as? T else { return nil }
            hits += 1
            return value
        }) {
            return cached
        }
        let value = try parse(String(decoding: try POSIXFile.readAll(fd, path: path, limit: limit), as: UTF8.self))
        withLock {
            misses += 1
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[path] = Entry(identity: identity, value: value)
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
