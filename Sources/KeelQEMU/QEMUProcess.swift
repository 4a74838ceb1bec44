import Glibc

/// A QEMU process that outlives the command that started it.
///
/// QEMU runs in its own session (setsid) with its stdout and stderr appended to the domain log
/// for its whole life, so that a failure at any time — also while loading incoming state — is
/// explained there. It is ready once its QMP socket accepts connections; if it exits first, the
/// last lines of the log are the error.
public struct QEMUProcess: Sendable {
    public var pid: Int32
    public var qmpSocket: String
    /// Where this process's output starts in the domain log.
    public var logStart: Int = 0

    public init(pid: Int32, qmpSocket: String, logStart: Int = 0) {
        self.pid = pid
        self.qmpSocket = qmpSocket
        self.logStart = logStart
    }

    /// Starts QEMU detached from this process.
    ///
    /// - Parameters:
    ///   - binary: the QEMU executable.
    ///   - arguments: its arguments, without `-daemonize`/`-pidfile` (added here).
    ///   - pidfile: where QEMU writes its pid.
    ///   - qmpSocket: the QMP socket path in `arguments`.
    ///   - log: QEMU's stdout and stderr are appended here.
    ///   - passing: file descriptors QEMU inherits (e.g. a restore stream).
    /// - Throws: `QEMUError` `.processExited` with QEMU's own last message when it fails.
    public static func spawn(binary: String, arguments: [String], pidfile: String, qmpSocket: String, log: String, passing: [Int32] = []) throws -> QEMUProcess {
        unlink(pidfile)
        unlink(qmpSocket)
        let logFD = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard logFD >= 0 else { throw QEMUError(.io, "cannot open QEMU log \(log): \(errnoText())") }
        defer { close(logFD) }
        let logStart = lseek(logFD, 0, SEEK_END)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        for fd in passing {
            // dup2 onto itself clears FD_CLOEXEC in the child.
            posix_spawn_file_actions_adddup2(&actions, fd, fd)
        }
        if passing.isEmpty {
            // QEMU outlives us: it must not keep our pipes, sockets or locks open.
            // glibc ≥ 2.34 has posix_spawn_file_actions_addclosefrom_np; Swift's Glibc module
            // does not import it, so it is looked up at run time.
            typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
            if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
                _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
            }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // 0x80 is glibc's POSIX_SPAWN_SETSID, which Swift's Glibc module does not import.
        posix_spawnattr_setflags(&attributes, Int16(0x80 | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        let argv = [binary] + arguments + ["-pidfile", pidfile]
        let environment = ["PATH=/usr/bin:/bin", "LC_ALL=C"]
        var launcher: pid_t = 0
        let status = withCStrings(argv) { argvPointers in
            withCStrings(environment) { envPointers in
                posix_spawn(&launcher, binary, &actions, &attributes, argvPointers, envPointers)
            }
        }
        guard status == 0 else {
            throw QEMUError(.processExited, "cannot start \(binary): \(errnoText(status))")
        }
        let limit = ContinuousClock.now + .seconds(30)
        // Ready once the monitor socket exists. It is not connected to here: QEMU's monitor
        // takes one client at a time and greets a client queued behind a closed one twice;
        // the QMP client retries the moment between bind and listen.
        while access(qmpSocket, F_OK) != 0 {
            var exitStatus: Int32 = 0
            let reaped = waitpid(launcher, &exitStatus, WNOHANG)
            if reaped == launcher || ContinuousClock.now > limit {
                if reaped != launcher {
                    kill(launcher, SIGKILL)
                    _ = waitpid(launcher, &exitStatus, 0)
                }
                // QEMU may have created its socket before failing; leave nothing stale behind.
                unlink(qmpSocket)
                unlink(pidfile)
                let detail = lastLines(of: log, from: logStart)
                let reason = reaped == launcher ? "QEMU failed to start" : "QEMU did not open its monitor within 30 s"
                throw QEMUError(.processExited, reason + (detail.isEmpty ? "" : ": " + detail))
            }
            usleep(2_000)
        }
        let pid = launcher
        return QEMUProcess(pid: pid, qmpSocket: qmpSocket, logStart: Int(logStart))
    }

    /// Whether the process is alive and is a QEMU (not a recycled pid).
    public var isAlive: Bool {
        // Reap it when it is our own child that exited (QEMU started by this process).
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { return false }
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        // keeld asks this for every status query of a running guest: `stat` first, whose command
        // name is usually enough; `cmdline` (read from the process's memory, dearer) only when
        // the executable's name does not say qemu.
        guard let stat = try? POSIXFile.read("/proc/\(pid)/stat") else { return false }
        let (command, zombie) = Self.parse(stat: stat)
        if zombie { return false }
        if Self.contains(command, "qemu") { return true }
        guard let cmdline = try? POSIXFile.read("/proc/\(pid)/cmdline") else { return false }
        return Self.contains(cmdline, "qemu")
    }

    /// The command name of `/proc/PID/stat` (in parentheses, and may itself contain ") ") and
    /// whether the state after it says zombie.
    static func parse(stat: [UInt8]) -> (command: [UInt8], zombie: Bool) {
        guard let open = stat.firstIndex(of: UInt8(ascii: "(")), let close = stat.lastIndex(of: UInt8(ascii: ")")), open < close else {
            return ([], false)
        }
        let zombie = close + 2 < stat.count && stat[close + 1] == UInt8(ascii: " ") && stat[close + 2] == UInt8(ascii: "Z")
        return (Array(stat[(open + 1)..<close]), zombie)
    }

    static func contains(_ bytes: [UInt8], _ needle: StaticString) -> Bool {
        let pattern = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
        guard let first = pattern.first, bytes.count >= pattern.count else { return pattern.isEmpty }
        var index = 0
        while index <= bytes.count - pattern.count {
            if bytes[index] == first && zip(bytes[index...], pattern).allSatisfy({ $0 == $1 }) { return true }
            index += 1
        }
        return false
    }

    /// Stops QEMU: SIGTERM, then SIGKILL after `grace`; waits until it is gone.
    /// - Parameter quitting: how long to first wait for a QEMU already told to `quit`, looking
    ///   every millisecond (it is usually gone within a few).
    public func terminate(grace: Duration = .seconds(3), quitting: Duration = .zero) {
        guard isAlive else { return }
        let quick = ContinuousClock.now + quitting
        while isAlive && ContinuousClock.now < quick {
            usleep(1_000)
        }
        guard isAlive else { return }
        kill(pid, SIGTERM)
        let limit = ContinuousClock.now + grace
        while isAlive && ContinuousClock.now < limit {
            usleep(10_000)
        }
        if isAlive {
            kill(pid, SIGKILL)
            let hardLimit = ContinuousClock.now + .seconds(5)
            while isAlive && ContinuousClock.now < hardLimit { usleep(10_000) }
        }
    }

    static func lastLines(of path: String, from offset: Int) -> String {
        guard let bytes = try? POSIXFile.read(path) else { return "" }
        let tail = bytes.count > offset ? Array(bytes[max(0, offset)...]) : []
        let text = String(decoding: tail, as: UTF8.self)
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters() }.filter { !$0.isEmpty }
        return lines.suffix(3).joined(separator: " | ")
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        var value = self
        while let first = value.first, first.isWhitespace { value.removeFirst() }
        while let last = value.last, last.isWhitespace { value.removeLast() }
        return String(value)
    }
}

/// Calls `body` with a NULL-terminated C array of the strings.
func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return body(pointers)
}
