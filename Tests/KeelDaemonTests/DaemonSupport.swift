import Foundation
import KeelTestSupport
import Testing

/// A minimal HTTP/1.1 client over a Unix socket: one request per connection, `Connection: close`,
/// `Content-Length` bodies; reads until the server closes and understands chunked replies.
enum UnixHTTP {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: Data

        var text: String { String(decoding: body, as: UTF8.self) }

        /// The body as a JSON object, or an empty one.
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }

        /// `error.code` of an error body.
        var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
        var errorMessage: String { (json["error"] as? [String: Any])?["message"] as? String ?? "" }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Sends one request and returns the response.
    static func request(socket path: String, method: String, path target: String, body: Data? = nil, timeout: Int = 60) throws -> Response {
        let fd = try connect(path, timeout: timeout)
        defer { close(fd) }
        var head = "\(method) \(target) HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\n"
        if let body {
            head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        var bytes = Data(head.utf8)
        if let body { bytes.append(body) }
        // A refused upload may close the connection early: keep what the server answered.
        _ = bytes.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let sent = send(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset, Int32(MSG_NOSIGNAL))
                if sent <= 0 { return false }
                offset += sent
            }
            return true
        }
        var received = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count > 0 {
                received.append(contentsOf: chunk[0..<count])
            } else if count == 0 || errno != EINTR {
                break
            }
        }
        return try parse(received)
    }

    /// A JSON request: `body` is serialized with JSONSerialization.
    static func json(socket: String, _ method: String, _ target: String, _ body: [String: Any]? = nil) throws -> Response {
        try request(socket: socket, method: method, path: target, body: try body.map { try JSONSerialization.data(withJSONObject: $0) })
    }

    static func connect(_ path: String, timeout: Int) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
        var time = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        // A server that refuses an upload may stop reading it; the answer is read after that.
        var sendTime = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sendTime, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in bytes.prefix(buffer.count - 1).enumerated() { buffer[index] = byte }
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let text = String(cString: strerror(errno))
            close(fd)
            throw Failure(description: "connect \(path): \(text)")
        }
        return fd
    }

    static func parse(_ data: Data) throws -> Response {
        let separator = Data("\r\n\r\n".utf8)
        guard let end = data.range(of: separator) else { throw Failure(description: "no HTTP header in \(data.count) bytes") }
        let head = String(decoding: data[data.startIndex..<end.lowerBound], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw Failure(description: "bad status line in \(head)") }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Data(data[end.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            body = try dechunk(body)
        } else if let length = headers["content-length"].flatMap(Int.init), body.count > length {
            body = body.prefix(length)
        }
        return Response(status: status, headers: headers, body: body)
    }

    /// Every response in `data`, one after another (pipelined); each must carry Content-Length.
    static func parseAll(_ data: Data) throws -> [Response] {
        var responses: [Response] = []
        var rest = data[...]
        let separator = Data("\r\n\r\n".utf8)
        while !rest.isEmpty {
            guard let end = rest.range(of: separator) else { throw Failure(description: "no HTTP header in the last \(rest.count) bytes") }
            let head = String(decoding: rest[rest.startIndex..<end.lowerBound], as: UTF8.self).lowercased()
            guard let line = head.components(separatedBy: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
                  let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
            else { throw Failure(description: "a pipelined response without Content-Length: \(head)") }
            let stop = rest.index(end.upperBound, offsetBy: length, limitedBy: rest.endIndex) ?? rest.endIndex
            responses.append(try parse(Data(rest[rest.startIndex..<stop])))
            rest = rest[stop...]
        }
        return responses
    }

    static func dechunk(_ data: Data) throws -> Data {
        var out = Data()
        var rest = data[...]
        while let lineEnd = rest.range(of: Data("\r\n".utf8)) {
            let sizeText = String(decoding: rest[rest.startIndex..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw Failure(description: "bad chunk size") }
            if size == 0 { break }
            let start = lineEnd.upperBound
            guard rest.distance(from: start, to: rest.endIndex) >= size + 2 else { throw Failure(description: "short chunk") }
            let stop = rest.index(start, offsetBy: size)
            out.append(rest[start..<stop])
            rest = rest[rest.index(stop, offsetBy: 2)...]
        }
        return out
    }
}

/// A `keeld` process on a throwaway state directory and socket.
final class Keeld {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The `keeld` binary next to this test bundle.
    static let binary: String = {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var directory = executable.deletingLastPathComponent()
        // The test bundle lives in .build/<triple>/debug/keelPackageTests.xctest or beside keeld.
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("keeld").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return repository.appendingPathComponent(".build/debug/keeld").path
    }()

    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// Why tests with guests cannot run here, or nil when they can.
    static let guestUnavailableReason: String? = {
        guard FileManager.default.isExecutableFile(atPath: qemu) else { return "qemu-system-x86_64 is not installed" }
        guard guestPath != nil else { return "the test guest cannot be built (is nasm installed?)" }
        return nil
    }()

    /// The test guest, built with nasm on first use.
    static let guestPath: String? = {
        let elf = repository.appendingPathComponent("guest/keel-guest.elf").path
        guard (try? Subprocess.run("/usr/bin/make", ["-s", "-C", repository.appendingPathComponent("guest").path], timeout: 120)) != nil else { return nil }
        return FileManager.default.fileExists(atPath: elf) ? elf : nil
    }()

    let directory: URL
    var state: String { directory.appendingPathComponent("state").path }
    var socket: String { directory.appendingPathComponent("run/keeld.sock").path }
    var logPath: String { directory.appendingPathComponent("keeld.log").path }
    /// The running daemon's pid; spawned and reaped here rather than through Foundation's
    /// `Process`, so a signalled daemon's exit status is read deterministically.
    private(set) var pid: pid_t?
    private(set) var exitStatus: Int32?
    private var extraArguments: [String]
    /// A command that runs keeld (e.g. `ip netns exec NS`), replacing itself with it so that
    /// the pid stays keeld's.
    var launcher: [String] = []

    /// A fresh directory; call `start()` to run the daemon.
    init(arguments: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("keeld-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        extraArguments = arguments
    }

    /// Whether the daemon is still running (reaps it when it has exited).
    var isRunning: Bool {
        guard let pid else { return false }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == 0 { return true }
        // WIFEXITED / WEXITSTATUS, or 128 + the signal.
        exitStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        self.pid = nil
        return false
    }

    /// Starts (or restarts) keeld on this directory and waits until it answers.
    func start(arguments: [String]? = nil) throws {
        if let arguments { extraArguments = arguments }
        let argv = launcher + [Self.binary, "--state", state, "--socket", socket, "--log-level", "debug"] + extraArguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, launcher.first ?? Self.binary, &actions, nil, &cArguments, environ)
        guard result == 0 else { throw UnixHTTP.Failure(description: "cannot run \(Self.binary): \(String(cString: strerror(result)))") }
        pid = child
        exitStatus = nil
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !isRunning { throw UnixHTTP.Failure(description: "keeld exited (\(exitStatus ?? -1)): \(log())") }
            if let response = try? get("/v1/domains"), response.status == 200 { return }
            usleep(50_000)
        }
        throw UnixHTTP.Failure(description: "keeld did not answer within 20 s: \(log())")
    }

    /// Sends `signal` and waits for the daemon to exit; returns its exit status (128 + signal
    /// when killed by one), or nil when it had to be killed after `timeout`.
    @discardableResult
    func stop(_ signal: Int32 = SIGTERM, timeout: TimeInterval = 20) -> Int32? {
        guard let pid, isRunning else { return exitStatus }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning {
            if Date() > deadline {
                kill(pid, SIGKILL)
                while isRunning { usleep(10_000) }
                return nil
            }
            usleep(10_000)
        }
        return exitStatus
    }

    func signal(_ signal: Int32) {
        if let pid, isRunning { kill(pid, signal) }
    }

    func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    func get(_ path: String) throws -> UnixHTTP.Response {
        try UnixHTTP.request(socket: socket, method: "GET", path: path)
    }

    func post(_ path: String, _ body: [String: Any]? = nil) throws -> UnixHTTP.Response {
        try UnixHTTP.json(socket: socket, "POST", path, body ?? [:])
    }

    func delete(_ path: String) throws -> UnixHTTP.Response {
        try UnixHTTP.request(socket: socket, method: "DELETE", path: path)
    }

    /// Runs a blocking request off the cooperative pool.
    static func background(socket: String, _ method: String, _ path: String, _ body: [String: Any]? = nil) async throws -> UnixHTTP.Response {
        let data = try body.map { try JSONSerialization.data(withJSONObject: $0) }
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try UnixHTTP.request(socket: socket, method: method, path: path, body: data) })
            }
        }
    }

    func serialPath(_ name: String) -> String { directory.appendingPathComponent("\(name).serial").path }

    /// A tiny TCG domain running the test guest.
    /// - Parameter acpi: give the machine ACPI and have the guest power off when its power
    ///   button is pressed (`shutdown`).
    func domainXML(name: String, memoryMiB: Int = 16, cmdline: String = "", acpi: Bool = false) -> String {
        """
        <domain type='qemu'>
          <name>\(name)</name>
          <memory unit='MiB'>\(memoryMiB)</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>\(Self.guestPath ?? "")</kernel>
            <cmdline>\(acpi ? "acpi " : "")\(cmdline)</cmdline>
          </os>\(acpi ? "\n  <features><acpi/></features>" : "")
          <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
          <devices>
            <serial type='file'>
              <source path='\(serialPath(name))'/>
            </serial>
          </devices>
        </domain>
        """
    }

    /// Waits until the guest's serial output contains `text`.
    func waitForSerial(_ name: String, _ text: String, timeout: TimeInterval = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: serialPath(name)), String(decoding: data, as: UTF8.self).contains(text) { return }
            usleep(100_000)
        }
        throw UnixHTTP.Failure(description: "no '\(text)' from \(name) within \(timeout) s")
    }

    /// Stops the daemon, every guest left in the state directory, and removes the directory.
    func tearDown() {
        stop(SIGKILL)
        for file in (try? FileManager.default.contentsOfDirectory(atPath: state + "/run")) ?? [] where file.hasSuffix(".pid") {
            if let text = try? String(contentsOfFile: state + "/run/" + file, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGKILL)
            }
        }
        // Also QEMUs whose pidfile is gone or was never written (a start interrupted early).
        for pid in qemuProcesses() { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Every live QEMU process whose command line names this test's state directory.
    func qemuProcesses() -> [Int32] {
        let marker = Data(state.utf8)
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry in
            guard let pid = Int32(entry), let cmdline = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
                  cmdline.range(of: Data("qemu-system".utf8)) != nil, cmdline.range(of: marker) != nil, isAlive(pid)
            else { return nil }
            return pid
        }
    }

    /// Runs `body` with a fresh daemon and always tears it down.
    static func with<T>(arguments: [String] = [], _ body: (Keeld) async throws -> T) async throws -> T {
        let keeld = try Keeld(arguments: arguments)
        defer { keeld.tearDown() }
        try keeld.start()
        return try await body(keeld)
    }
}

/// Whether a process is alive (a zombie is not).
func isAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 || errno == EPERM else { return false }
    let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    return !stat.contains(") Z ")
}
