import Glibc

/// A QEMU process that outlives the command that started it.
///
/// QEMU is started with `-daemonize -pidfile`: the launcher process exits once QEMU is set up
/// (its QMP socket listening), so a zero exit means QEMU is ready and its pid is in the
/// pidfile; a non-zero exit means it failed, with the reason in the domain log.
public struct QEMUProcess: Sendable {
    public var pid: Int32
    public var qmpSocket: String

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
        let argv = [binary] + arguments + ["-daemonize", "-pidfile", pidfile]
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
        var exitStatus: Int32 = 0
        while waitpid(launcher, &exitStatus, 0) < 0 {
            if errno != EINTR { break }
        }
        let exited = (exitStatus & 0x7f) == 0
        let code = (exitStatus >> 8) & 0xff
        guard exited && code == 0 else {
            // QEMU may have created its socket before failing; leave nothing stale behind.
            unlink(qmpSocket)
            unlink(pidfile)
            let detail = lastLines(of: log, from: logStart)
            throw QEMUError(.processExited, "QEMU failed to start" + (detail.isEmpty ? "" : ": " + detail))
        }
        guard let text = try? POSIXFile.readString(pidfile), let pid = Int32(text.filter(\.isNumber)) else {
            throw QEMUError(.processExited, "QEMU started but wrote no pid to \(pidfile)")
        }
        return QEMUProcess(pid: pid, qmpSocket: qmpSocket)
    }

    /// Whether the process is alive and is a QEMU (not a recycled pid).
    public var isAlive: Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let cmdline = try? POSIXFile.read("/proc/\(pid)/cmdline") else { return false }
        let text = String(decoding: cmdline, as: UTF8.self)
        if let stat = try? POSIXFile.readString("/proc/\(pid)/stat"), stat.contains(") Z ") { return false }
        return text.contains("qemu")
    }

    /// Stops QEMU: SIGTERM, then SIGKILL after `grace`; waits until it is gone.
    public func terminate(grace: Duration = .seconds(3)) {
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
