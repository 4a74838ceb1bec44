import Foundation
import Glibc

/// Child processes for the tests, with a deadline on everything that waits.
///
/// Foundation's `Process.waitUntilExit()` can miss a child's exit and wait forever (seen here
/// when the child's script started daemons), and reading a pipe to its end waits for every
/// process that inherited it. A test suite that drives real QEMU, libvirt and keeld must fail
/// with a message instead, so the tests spawn through this: `posix_spawn` into a new process
/// group, both output pipes drained together with `poll`, `waitpid` on the child itself, and
/// on the deadline the whole group is killed and the result says so.
public enum Subprocess {
    public struct Result: Sendable {
        /// The exit status, or 128 + the signal that ended the child.
        public var status: Int32
        public var stdout: String
        public var stderr: String
        /// Whether the deadline passed and the child's process group was killed.
        public var timedOut: Bool

        /// Standard output and error, in that order.
        public var output: String { stdout + stderr }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    /// Runs `executable` with `arguments` and returns its status and output; kills its process
    /// group after `timeout` seconds (the result then has `timedOut` set and status 128 + 9).
    ///
    /// - Parameters:
    ///   - environment: the whole environment, or nil for this process's.
    ///   - directory: the working directory, or nil for this process's.
    ///   - input: bytes for its standard input, else /dev/null.
    ///   - discardOutput: send both outputs to /dev/null (for chatty children).
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        directory: String? = nil, input: Data? = nil, timeout: Double = 120, discardOutput: Bool = false
    ) throws -> Result {
        let child = try spawn(executable, arguments, environment: environment, directory: directory,
                              input: input, captureOutput: !discardOutput)
        return child.finish(timeout: timeout)
    }

    /// Runs a program found on the usual PATH directories.
    public static func which(_ name: String) -> String? {
        for directory in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
            let path = "\(directory)/\(name)"
            if access(path, X_OK) == 0 { return path }
        }
        return nil
    }

    /// A started child. `finish` (or `wait`) must be called once to reap it.
    public final class Child: @unchecked Sendable {
        public let pid: pid_t
        private var stdoutFD: Int32
        private var stderrFD: Int32
        private var inputFD: Int32
        private var pendingInput: [UInt8]
        private var out: [UInt8] = []
        private var err: [UInt8] = []
        private var exitStatus: Int32?

        init(pid: pid_t, stdoutFD: Int32, stderrFD: Int32, inputFD: Int32, input: [UInt8]) {
            self.pid = pid
            self.stdoutFD = stdoutFD
            self.stderrFD = stderrFD
            self.inputFD = inputFD
            self.pendingInput = input
        }

        deinit {
            for fd in [stdoutFD, stderrFD, inputFD] where fd >= 0 { close(fd) }
        }

        /// Whether the child still runs (reaps it when it has exited).
        public var isRunning: Bool {
            if exitStatus != nil { return false }
            return !reap(blocking: false)
        }

        /// Sends `signal` to the child alone.
        public func signal(_ signal: Int32) {
            if exitStatus == nil { kill(pid, signal) }
        }

        /// Waits up to `timeout` seconds for the child to exit; nil if it still runs.
        public func wait(timeout: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(timeout)
            while exitStatus == nil {
                if reap(blocking: false) { break }
                if Date() >= deadline { return nil }
                pump(milliseconds: 20)
            }
            return exitStatus
        }

        /// Waits up to `timeout` for the child, killing its process group when the deadline
        /// passes, and returns its status and everything it wrote.
        public func finish(timeout: Double) -> Result {
            var timedOut = false
            if wait(timeout: timeout) == nil {
                timedOut = true
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                _ = reap(blocking: true)
            }
            // Output still buffered in the pipes; a grandchild that kept them open (a daemon
            // the child started) must not hold the test, so this drain is bounded.
            let drainDeadline = Date().addingTimeInterval(2)
            while (stdoutFD >= 0 || stderrFD >= 0) && Date() < drainDeadline {
                pump(milliseconds: 50)
            }
            for fd in [stdoutFD, stderrFD, inputFD] where fd >= 0 { close(fd) }
            stdoutFD = -1
            stderrFD = -1
            inputFD = -1
            return Result(status: exitStatus ?? -1, stdout: String(decoding: out, as: UTF8.self),
                          stderr: String(decoding: err, as: UTF8.self), timedOut: timedOut)
        }

        /// Reaps the child; true once it has exited.
        private func reap(blocking: Bool) -> Bool {
            if exitStatus != nil { return true }
            var status: Int32 = 0
            while true {
                let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
                if result == pid { break }
                if result == 0 { return false }
                if errno == EINTR { continue }
                // Reaped elsewhere (ECHILD): the status is lost, but the child is gone.
                exitStatus = -1
                return true
            }
            exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            return true
        }

        /// One round of reading the output pipes and feeding the input pipe.
        private func pump(milliseconds: Int32) {
            var fds: [pollfd] = []
            if stdoutFD >= 0 { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
            if stderrFD >= 0 { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
            if inputFD >= 0 { fds.append(pollfd(fd: inputFD, events: Int16(POLLOUT), revents: 0)) }
            if fds.isEmpty {
                usleep(UInt32(milliseconds) * 1000)
                return
            }
            guard poll(&fds, nfds_t(fds.count), milliseconds) > 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 65536)
            for entry in fds where entry.revents != 0 {
                if entry.fd == inputFD {
                    let written = pendingInput.withUnsafeBytes { write(inputFD, $0.baseAddress, $0.count) }
                    if written > 0 { pendingInput.removeFirst(written) }
                    if written < 0 && errno != EINTR && errno != EAGAIN || pendingInput.isEmpty {
                        close(inputFD)
                        inputFD = -1
                    }
                    continue
                }
                let count = read(entry.fd, &buffer, buffer.count)
                if count > 0 {
                    if entry.fd == stdoutFD { out += buffer[0..<count] } else { err += buffer[0..<count] }
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    close(entry.fd)
                    if entry.fd == stdoutFD { stdoutFD = -1 } else { stderrFD = -1 }
                }
            }
        }
    }

    /// Starts a child in its own process group. With `captureOutput` false its output goes to
    /// `outputFile` (appended) or /dev/null, and its errors to `errorFile`, else with the output.
    /// A pipe whose ends close on exec (the child gets its end through dup2).
    private static func makePipe(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    public static func spawn(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        directory: String? = nil, input: Data? = nil, captureOutput: Bool = true, outputFile: String? = nil,
        errorFile: String? = nil
    ) throws -> Child {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, so a deadline kills what it started too; default signal
        // handling and mask, whatever this test process set.
        var defaults = sigset_t()
        sigfillset(&defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1], inPipe: [Int32] = [-1, -1]
        func closeAll() { for fd in outPipe + errPipe + inPipe where fd >= 0 { close(fd) } }
        if let input, !input.isEmpty {
            guard makePipe(&inPipe) else { throw Failure(description: "pipe: \(String(cString: strerror(errno)))") }
            posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if captureOutput {
            guard makePipe(&outPipe), makePipe(&errPipe) else {
                closeAll()
                throw Failure(description: "pipe: \(String(cString: strerror(errno)))")
            }
            posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
            posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        } else {
            let target = outputFile ?? "/dev/null"
            posix_spawn_file_actions_addopen(&actions, 1, target, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            if let errorFile {
                posix_spawn_file_actions_addopen(&actions, 2, errorFile, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            } else {
                posix_spawn_file_actions_adddup2(&actions, 1, 2)
            }
        }
        if let directory {
            // A GNU extension (glibc 2.29), which the Glibc module does not export.
            typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
            guard let symbol = dlsym(nil, "posix_spawn_file_actions_addchdir_np") else {
                closeAll()
                throw Failure(description: "this C library cannot set a child's working directory")
            }
            _ = unsafeBitCast(symbol, to: AddChdir.self)(&actions, directory)
        }

        let argv = [executable] + arguments
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var cArgv = argv.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer {
            for pointer in cArgv { free(pointer) }
            for pointer in cEnv { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, &cArgv, &cEnv)
        for fd in [outPipe[1], errPipe[1], inPipe[0]] where fd >= 0 { close(fd) }
        guard result == 0 else {
            for fd in [outPipe[0], errPipe[0], inPipe[1]] where fd >= 0 { close(fd) }
            throw Failure(description: "cannot run \(executable): \(String(cString: strerror(result)))")
        }
        if inPipe[1] >= 0 { _ = fcntl(inPipe[1], F_SETFL, fcntl(inPipe[1], F_GETFL) | O_NONBLOCK) }
        return Child(pid: pid, stdoutFD: outPipe[0], stderrFD: errPipe[0], inputFD: inPipe[1], input: input.map { [UInt8]($0) } ?? [])
    }
}
