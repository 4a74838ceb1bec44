#if canImport(Glibc)
import Glibc
#endif

/// Thin, checked wrappers over the system calls the save image code needs. Every failure becomes
/// a ``SaveImageError`` with code `.io` naming the operation and the path.
enum POSIX {
    /// Opens a file; the descriptor is always close-on-exec so it never leaks into children.
    static func open(_ path: String, flags: Int32, mode: mode_t = 0o600, what: String) throws -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 {
                return fd
            }
            if errno != EINTR {
                throw SaveImageError.system("cannot open \(what) '\(path)'", call: "open")
            }
        }
    }

    /// The size of the open file.
    static func fileSize(_ fd: Int32, path: String) throws -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw SaveImageError.system("cannot stat '\(path)'", call: "fstat")
        }
        return UInt64(max(0, st.st_size))
    }

    /// Reads until `buffer` is full or end of file; returns the bytes read.
    static func readFull(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, what: String) throws -> Int {
        guard let base = buffer.baseAddress else {
            return 0
        }
        var done = 0
        while done < buffer.count {
            let n = Glibc.read(fd, base + done, buffer.count - done)
            if n > 0 {
                done += n
            } else if n == 0 {
                break
            } else if errno != EINTR {
                throw SaveImageError.system("failed to read \(what)", call: "read")
            }
        }
        return done
    }

    /// Reads at `offset` until `buffer` is full or end of file; returns the bytes read.
    static func preadFull(
        _ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, what: String
    ) throws -> Int {
        guard let base = buffer.baseAddress else {
            return 0
        }
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, base + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 {
                done += n
            } else if n == 0 {
                break
            } else if errno != EINTR {
                throw SaveImageError.system("failed to read \(what)", call: "pread")
            }
        }
        return done
    }

    /// Writes all of `buffer` at the descriptor's current offset.
    static func writeAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, what: String) throws {
        guard let base = buffer.baseAddress else {
            return
        }
        var done = 0
        while done < buffer.count {
            let n = Glibc.write(fd, base + done, buffer.count - done)
            if n >= 0 {
                done += n
            } else if errno != EINTR {
                throw SaveImageError.system("failed to write \(what)", call: "write")
            }
        }
    }

    /// Writes all of `buffer` into a pipe without letting a closed reader kill the process.
    ///
    /// SIGPIPE is blocked on this thread for the duration of the write; a SIGPIPE the write raises
    /// is consumed before the mask is restored, and the write reports `EPIPE` instead.
    static func writeAllToPipe(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, what: String) throws {
        var pipeSet = sigset_t()
        sigemptyset(&pipeSet)
        sigaddset(&pipeSet, SIGPIPE)
        var pending = sigset_t()
        sigpending(&pending)
        let wasPending = sigismember(&pending, SIGPIPE) == 1
        var oldMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipeSet, &oldMask)
        defer {
            pthread_sigmask(SIG_SETMASK, &oldMask, nil)
        }
        do {
            try writeAll(fd, buffer, what: what)
        } catch let error as SaveImageError {
            if let cause = error.cause as? SaveImageError.SystemError, cause.errno == EPIPE, !wasPending {
                var zero = timespec(tv_sec: 0, tv_nsec: 0)
                while sigtimedwait(&pipeSet, nil, &zero) == -1 && errno == EINTR {}
            }
            throw error
        }
    }

    /// Writes all of `buffer` at `offset`.
    static func pwriteAll(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64, what: String) throws {
        guard let base = buffer.baseAddress else {
            return
        }
        var done = 0
        while done < buffer.count {
            let n = Glibc.pwrite(fd, base + done, buffer.count - done, off_t(offset) + off_t(done))
            if n >= 0 {
                done += n
            } else if errno != EINTR {
                throw SaveImageError.system("failed to write \(what)", call: "pwrite")
            }
        }
    }

    static func seek(_ fd: Int32, to offset: UInt64, what: String) throws {
        guard lseek(fd, off_t(offset), SEEK_SET) == off_t(offset) else {
            throw SaveImageError.system("cannot seek in \(what)", call: "lseek")
        }
    }

    static func fsync(_ fd: Int32, what: String) throws {
        while Glibc.fsync(fd) != 0 {
            if errno != EINTR {
                throw SaveImageError.system("failed to sync \(what)", call: "fsync")
            }
        }
    }

    /// Syncs the directory holding `path`, so a newly created file's name is durable too.
    static func fsyncDirectory(of path: String) throws {
        let directory: String
        if let slash = path.lastIndex(of: "/") {
            directory = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            directory = "."
        }
        let fd = try open(directory, flags: O_RDONLY | O_DIRECTORY, what: "directory")
        defer { Glibc.close(fd) }
        try fsync(fd, what: "directory '\(directory)'")
    }

    /// Creates a close-on-exec pipe: `(read, write)`.
    static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        let rc: Int32
        if let pipe2 = Self.pipe2 {
            // Atomic close-on-exec: another thread's posix_spawn cannot inherit the ends.
            rc = fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) }
        } else {
            rc = Glibc.pipe(&fds)
            if rc == 0 {
                _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            }
        }
        guard rc == 0 else {
            throw SaveImageError.system("cannot create pipe", call: "pipe2")
        }
        return (fds[0], fds[1])
    }

    /// Creates an anonymous close-on-exec file in memory (`memfd_create`), or returns -1.
    static func anonymousFile(name: String) -> Int32 {
        guard let memfdCreate = Self.memfdCreate else {
            return -1
        }
        let mfdCloexec: UInt32 = 1
        return memfdCreate(name, mfdCloexec)
    }

    // Glibc's Swift module map does not export these GNU extensions, so they are looked up once.
    private static let pipe2: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32)? =
        lookup("pipe2")
    private static let memfdCreate: (@convention(c) (UnsafePointer<CChar>?, UInt32) -> Int32)? =
        lookup("memfd_create")

    private static func lookup<F>(_ symbol: String) -> F? {
        guard let address = dlsym(nil, symbol) else {
            return nil
        }
        return unsafeBitCast(address, to: F.self)
    }

    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    /// Hints the kernel that `fd` will be read sequentially from `offset` (larger readahead).
    static func adviseSequential(_ fd: Int32, from offset: UInt64) {
        _ = posix_fadvise(fd, off_t(offset), 0, Int32(POSIX_FADV_SEQUENTIAL))
    }
}
