import Foundation
import KeelTestSupport
import Testing

/// A `keeld` process on a throwaway directory (`ROOT/state`, socket `ROOT/run/keeld.sock`), for
/// running `keel` against it. The same pattern as KeelDaemonTests' `Keeld`, which this target
/// cannot import.
final class KeeldProcess {
    /// The `keeld` binary beside the `keel` the tests run.
    static let binary = URL(fileURLWithPath: Keel.binary).deletingLastPathComponent().appendingPathComponent("keeld").path

    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// Why tests with guests cannot run here, or nil when they can.
    static let guestUnavailableReason: String? = {
        guard FileManager.default.isExecutableFile(atPath: binary) else { return "no keeld beside keel (build with swift build --build-tests)" }
        guard FileManager.default.isExecutableFile(atPath: qemu) else { return "qemu-system-x86_64 is not installed" }
        guard guestPath != nil else { return "the test guest cannot be built (is nasm installed?)" }
        return nil
    }()

    /// The test guest, built with nasm on first use.
    static let guestPath: String? = {
        let elf = Keel.repository.appendingPathComponent("guest/keel-guest.elf").path
        guard (try? Subprocess.run("/usr/bin/make", ["-s", "-C", Keel.repository.appendingPathComponent("guest").path], timeout: 120)) != nil else { return nil }
        return FileManager.default.fileExists(atPath: elf) ? elf : nil
    }()

    let root: String
    var state: String { root + "/state" }
    var socket: String { root + "/run/keeld.sock" }
    var logPath: String { root + "/keeld.log" }
    private(set) var pid: pid_t?

    init(root: String) throws {
        self.root = root
        try FileManager.default.createDirectory(atPath: root + "/run", withIntermediateDirectories: true)
    }

    var isRunning: Bool {
        guard let pid else { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == 0 { return true }
        self.pid = nil
        return false
    }

    /// Starts keeld and waits until it answers on its socket.
    func start() throws {
        let argv = [Self.binary, "--state", state, "--socket", socket, "--log-level", "debug"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, Self.binary, &actions, nil, &cArguments, environ)
        guard result == 0 else { throw TestFailure("cannot run \(Self.binary): \(String(cString: strerror(result)))") }
        pid = child
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !isRunning { throw TestFailure("keeld exited: \(log())") }
            if FileManager.default.fileExists(atPath: socket),
               let listed = try? ClientRun.keel(["list", "--connect", "unix:" + socket]), listed.status == 0 {
                return
            }
            usleep(50_000)
        }
        throw TestFailure("keeld did not answer within 20 s: \(log())")
    }

    /// Sends `signal` and reaps keeld.
    func stop(_ signal: Int32 = SIGTERM) {
        guard let pid, isRunning else { return }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(20)
        while isRunning {
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(10_000)
        }
    }

    func signal(_ signal: Int32) {
        if let pid, isRunning { kill(pid, signal) }
    }

    func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }
}

/// One directory per mode: the state directory, serial files and images live under it, so
/// outputs compare equal once the directory is replaced by `ROOT`.
struct ModeRoot {
    let root: String
    let connect: String
    let daemon: KeeldProcess?

    var state: String { root + "/state" }
    func serialPath(_ name: String) -> String { root + "/\(name).serial" }

    /// Runs keel with this mode's `--connect`.
    func keel(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 120) throws -> ClientRun.Result {
        try ClientRun.keel(arguments + ["--connect", connect], environment: environment, timeout: timeout)
    }

    /// A tiny TCG domain running the test guest, with a fixed UUID so both modes print the same.
    func domainXML(name: String, memoryMiB: Int = 16, cmdline: String = "") -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <uuid>6b0d6c52-6b1c-4c8f-9a57-3c1f4c0e2d11</uuid>
          <memory unit='MiB'>\(memoryMiB)</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>\(KeeldProcess.guestPath ?? "")</kernel>
            <cmdline>\(cmdline)</cmdline>
          </os>
          <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
          <devices>
            <serial type='file'>
              <source path='\(serialPath(name))'/>
            </serial>
          </devices>
        </domain>
        """
    }

    func write(_ text: String, to name: String) throws -> String {
        let path = root + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Waits until the guest's serial output contains `text`.
    func waitForSerial(_ name: String, _ text: String, timeout: TimeInterval = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: serialPath(name)), String(decoding: data, as: UTF8.self).contains(text) { return }
            usleep(100_000)
        }
        throw TestFailure("no '\(text)' from \(name) within \(timeout) s")
    }

    /// Kills every QEMU left in the state directory, stops keeld and removes the directory.
    func tearDown() {
        daemon?.stop(SIGKILL)
        for file in (try? FileManager.default.contentsOfDirectory(atPath: state + "/run")) ?? [] where file.hasSuffix(".pid") {
            if let text = try? String(contentsOfFile: state + "/run/" + file, encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGKILL)
            }
        }
        try? FileManager.default.removeItem(atPath: root)
    }

    static func temporaryDirectory(_ label: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("keel-client-\(label)-\(UUID().uuidString.prefix(8))").path
    }

    /// An embedded root and a keeld root, torn down after `body` (also when it throws).
    static func withBoth<T>(configuration: String? = nil, _ body: (ModeRoot, ModeRoot) async throws -> T) async throws -> T {
        let embeddedRoot = temporaryDirectory("embed")
        let daemonRoot = temporaryDirectory("unix")
        try FileManager.default.createDirectory(atPath: embeddedRoot + "/state", withIntermediateDirectories: true)
        let daemon = try KeeldProcess(root: daemonRoot)
        let embedded = ModeRoot(root: embeddedRoot, connect: "embed:" + embeddedRoot + "/state", daemon: nil)
        let client = ModeRoot(root: daemonRoot, connect: "unix:" + daemon.socket, daemon: daemon)
        defer {
            embedded.tearDown()
            client.tearDown()
        }
        if let configuration {
            try FileManager.default.createDirectory(atPath: daemon.state, withIntermediateDirectories: true)
            for state in [embedded.state, daemon.state] {
                try configuration.write(toFile: state + "/config.xml", atomically: true, encoding: .utf8)
            }
        }
        try daemon.start()
        return try await body(embedded, client)
    }
}

/// Running `keel` with a controlled environment: the variables that choose a connection are
/// cleared unless a test sets them.
enum ClientRun {
    struct Result: Equatable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func keel(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 120) throws -> Result {
        var env = ["KEEL_CONNECT": "", "KEEL_SOCKET": "/nonexistent/keeld.sock", "KEEL_STATE": "", "KEEL_TIMEOUT": ""]
        for (key, value) in environment { env[key] = value }
        let result = try Keel.run(arguments, environment: env, timeout: timeout)
        return Result(status: result.status, stdout: result.stdout, stderr: result.stderr)
    }

    /// Starts keel without waiting, its output in files under `directory`.
    static func spawn(_ arguments: [String], environment: [String: String] = [:], directory: String) throws -> (Subprocess.Child, stdout: String, stderr: String) {
        var env = ProcessInfo.processInfo.environment
        for (key, value) in ["KEEL_CONNECT": "", "KEEL_SOCKET": "/nonexistent/keeld.sock"].merging(environment, uniquingKeysWith: { $1 }) {
            env[key] = value
        }
        let name = UUID().uuidString.prefix(8)
        let out = directory + "/\(name).out"
        let err = directory + "/\(name).err"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: err, contents: nil)
        let child = try Subprocess.spawn(Keel.binary, arguments, environment: env, captureOutput: false, outputFile: out, errorFile: err)
        return (child, out, err)
    }

    /// Waits for a spawned process, killing it after `timeout`.
    static func wait(_ process: Subprocess.Child, timeout: TimeInterval) -> Int32? {
        if let status = process.wait(timeout: timeout) { return status }
        process.signal(SIGKILL)
        _ = process.wait(timeout: 10)
        return nil
    }

    /// What differs between two runs of the same steps: the QEMU pids and the directory.
    static func normalized(_ text: String, root: String) -> String {
        var text = text.replacingOccurrences(of: root, with: "ROOT")
        for (pattern, template) in [
            (#""pid": [0-9]+"#, #""pid": PID"#), (#"Id:( +)[0-9]+"#, "Id:$1PID"), (#"(?m)^ [0-9]+ +"#, " PID "),
        ] {
            text = text.replacingOccurrences(of: pattern, with: template, options: .regularExpression)
        }
        return text
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Retries `body` until it returns a value, for up to `timeout`.
func eventually<T>(timeout: TimeInterval = 20, _ body: () throws -> T?) throws -> T {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if let value = try body() { return value }
        if Date() > deadline { throw TestFailure("condition not met within \(timeout) s") }
        usleep(100_000)
    }
}
