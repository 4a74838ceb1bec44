#if canImport(Glibc)
import Glibc
#endif

/// A compressor or decompressor child process (`gzip -c`, `xz -dc`, …) with its stdin and stdout
/// wired to descriptors the caller chose; stderr is captured for the error message.
final class CompressionProcess {
    let pid: pid_t
    let program: String
    private var stderrFD: Int32
    private var reaped = false

    /// Spawns `program` with `arguments`, stdin from `stdinFD` and stdout to `stdoutFD`.
    ///
    /// All other descriptors of this process are close-on-exec (Keel opens everything that way),
    /// so the child holds only its three standard streams.
    init(program: String, arguments: [String], stdin stdinFD: Int32, stdout stdoutFD: Int32) throws {
        self.program = program
        // Capture stderr in an anonymous file so a failure can say why.
        let errFD = POSIX.anonymousFile(name: "keel-\(program)-stderr")
        self.stderrFD = errFD

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinFD, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
        if errFD >= 0 {
            posix_spawn_file_actions_adddup2(&actions, errFD, 2)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with an empty signal mask and default SIGPIPE, whatever this process uses.
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGPIPE)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }

        var child: pid_t = 0
        let rc = posix_spawnp(&child, program, &actions, &attributes, argv, environ)
        guard rc == 0 else {
            if errFD >= 0 {
                Glibc.close(errFD)
            }
            throw SaveImageError(
                .processExited,
                "cannot run compression program '\(program)'",
                cause: SaveImageError.SystemError(call: "posix_spawnp", errno: rc)
            )
        }
        self.pid = child
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            _ = try? waitForExit()
        }
        if stderrFD >= 0 {
            Glibc.close(stderrFD)
        }
    }

    /// Kills the child (used when the stream is abandoned) and reaps it.
    func terminate() {
        guard !reaped else {
            return
        }
        kill(pid, SIGKILL)
        _ = try? waitForExit()
    }

    /// Waits for the child and throws unless it exited with status 0.
    /// - Throws: ``SaveImageError`` `.processExited` with the exit status or signal and stderr.
    func waitForSuccess() throws {
        let status = try waitForExit()
        let exitCode = (status >> 8) & 0xff
        let signal = status & 0x7f
        if signal == 0 && exitCode == 0 {
            return
        }
        var message = signal == 0
            ? "compression program '\(program)' exited with status \(exitCode)"
            : "compression program '\(program)' was killed by signal \(signal)"
        let errorText = capturedStderr()
        if !errorText.isEmpty {
            message += " (\(errorText))"
        }
        throw SaveImageError(.processExited, message)
    }

    /// The raw `waitpid` status.
    private func waitForExit() throws -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR {
                reaped = true
                throw SaveImageError.system("cannot wait for '\(program)'", call: "waitpid")
            }
        }
        reaped = true
        return status
    }

    /// The first KiB of what the child wrote to stderr, trimmed to one line.
    private func capturedStderr() -> String {
        guard stderrFD >= 0 else {
            return ""
        }
        var bytes = [UInt8](repeating: 0, count: 1024)
        let n = bytes.withUnsafeMutableBytes { pread(stderrFD, $0.baseAddress, $0.count, 0) }
        guard n > 0 else {
            return ""
        }
        let text = String(decoding: bytes[0..<n], as: UTF8.self)
        return text.split(whereSeparator: { $0 == "\n" }).map(String.init).joined(separator: "; ")
    }
}
