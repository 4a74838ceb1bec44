import Foundation
import Testing

/// Which process a verb runs in, and what keel says when keeld cannot answer.
@Suite("keel's connection to keeld", .serialized)
struct ClientConnectionTests {
    static func directory() throws -> String {
        let path = ModeRoot.temporaryDirectory("conn")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func expectOneLineError(_ result: ClientRun.Result, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("error: "), "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(result)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(expected), "\(result.stderr)", sourceLocation: sourceLocation)
    }

    @Test("a missing socket, a refused connection, garbage, a reply that is not the API's JSON and silence are one-line errors")
    func unreachable() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let missing = try ClientRun.keel(["list", "--connect", "unix:\(directory)/none.sock"])
        #expect(missing == ClientRun.Result(status: 1, stdout: "", stderr: "error: cannot connect to keeld: no socket at \(directory)/none.sock (is keeld running?)\n"))

        let refusing = try FakeKeeld(path: directory + "/refusing.sock", listen: false)
        defer { refusing.stop() }
        Self.expectOneLineError(try ClientRun.keel(["dominfo", "web", "--connect", "unix:" + refusing.path]),
                                "cannot connect to keeld at \(refusing.path): connection refused")

        let garbage = try FakeKeeld(path: directory + "/garbage.sock") { connection in
            connection.readRequest()
            connection.write("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        }
        defer { garbage.stop() }
        Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + garbage.path]),
                                "keeld answered GET /v1/domains with something that is not HTTP/1.1: not an HTTP response: SSH-2.0")

        let html = try FakeKeeld(path: directory + "/html.sock") { connection in
            connection.readRequest()
            connection.write("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>")
        }
        defer { html.stop() }
        Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + html.path]),
                                "keeld's answer to GET /v1/domains is not the expected JSON")

        let notFound = try FakeKeeld(path: directory + "/notfound.sock") { connection in
            connection.readRequest()
            connection.write("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad")
        }
        defer { notFound.stop() }
        Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + notFound.path]),
                                "keeld answered GET /v1/domains with HTTP 502 and no error body: bad")

        let silent = try FakeKeeld(path: directory + "/silent.sock") { connection in
            connection.readRequest()
            connection.waitForClose()
        }
        defer { silent.stop() }
        let started = Date()
        let timedOut = try ClientRun.keel(["dominfo", "web", "--connect", "unix:" + silent.path], environment: ["KEEL_TIMEOUT": "1"])
        #expect(timedOut == ClientRun.Result(status: 1, stdout: "", stderr: "error: keeld did not answer GET /v1/domains/web within 1 s\n"))
        #expect(Date().timeIntervalSince(started) < 10)

        let hangsUp = try FakeKeeld(path: directory + "/hangsup.sock") { connection in
            connection.readRequest()
        }
        defer { hangsUp.stop() }
        #expect(try ClientRun.keel(["start", "web", "--connect", "unix:" + hangsUp.path]).stderr
            == "error: keeld closed the connection before answering POST /v1/domains/web/start (did it stop?)\n")

        Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + silent.path], environment: ["KEEL_TIMEOUT": "soon"]),
                                "KEEL_TIMEOUT 'soon' must be a number of seconds")
    }

    @Test("keeld killed in the middle of a request: keel says the connection closed, exits 1, and the guest keeps running")
    func daemonKilledMidRequest() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await ModeRoot.withBoth { _, client in
            let xml = try client.write(client.domainXML(name: "web"), to: "web.xml")
            #expect(try client.keel(["define", xml]).status == 0)
            #expect(try client.keel(["start", "web"]).status == 0)
            let info = try client.keel(["dominfo", "web", "--json"])
            let object = try #require(try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any])
            let pid = try #require((object["pid"] as? Int).map { Int32($0) })
            // The test guest ignores ACPI, so the request waits for its whole timeout.
            let (process, stdout, stderr) = try ClientRun.spawn(["shutdown", "web", "--timeout", "60", "--connect", client.connect], directory: client.root)
            try await Task.sleep(for: .seconds(1))
            #expect(process.isRunning, "the shutdown request is waiting")
            client.daemon?.stop(SIGKILL)
            let status = ClientRun.wait(process, timeout: 20)
            #expect(status == 1)
            #expect(try String(contentsOfFile: stdout, encoding: .utf8).isEmpty)
            #expect(try String(contentsOfFile: stderr, encoding: .utf8)
                == "error: keeld closed the connection before answering POST /v1/domains/web/shutdown (did it stop?)\n")
            #expect(kill(pid, 0) == 0, "the guest outlives keeld")
            // With keeld gone, its socket is stale: refused.
            let stale = try client.keel(["list"])
            #expect(stale.status == 1)
            #expect(stale.stderr.contains("connection refused"), "\(stale.stderr)")
            // The guest is still there for the embedded driver on the same state directory.
            let embedded = try ClientRun.keel(["list", "--state", client.state])
            #expect(embedded.stdout.contains("web                  running"), "\(embedded)")
        }
    }

    @Test("the mode: --connect, else --state, else KEEL_CONNECT, else keeld when its socket exists, else embedded on KEEL_STATE")
    func modeSelection() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await ModeRoot.withBoth { embedded, client in
            // One domain on each side tells which side answered.
            #expect(try client.keel(["define", try client.write(client.domainXML(name: "in-keeld"), to: "d.xml")]).status == 0)
            #expect(try embedded.keel(["define", try embedded.write(embedded.domainXML(name: "in-embedded"), to: "e.xml")]).status == 0)
            func side(_ arguments: [String], _ environment: [String: String]) throws -> String {
                let result = try ClientRun.keel(arguments, environment: environment)
                if result.stdout.contains("in-keeld") { return "keeld" }
                if result.stdout.contains("in-embedded") { return "embedded" }
                return result.stderr.isEmpty ? "neither" : result.stderr
            }
            let socket = client.daemon?.socket ?? ""
            let state = embedded.state
            #expect(try side(["list", "--all"], ["KEEL_SOCKET": socket]) == "keeld", "the socket exists: keeld")
            #expect(try side(["list", "--all"], ["KEEL_SOCKET": socket + ".missing", "KEEL_STATE": state]) == "embedded", "no socket: embedded on KEEL_STATE")
            #expect(try side(["list", "--all"], ["KEEL_SOCKET": embedded.root + "/e.xml", "KEEL_STATE": state]) == "embedded", "a file that is not a socket")
            #expect(try side(["list", "--all", "--state", state], ["KEEL_SOCKET": socket]) == "embedded", "--state means embedded")
            #expect(try side(["list", "--all"], ["KEEL_SOCKET": socket, "KEEL_CONNECT": "embed:" + state]) == "embedded", "KEEL_CONNECT first")
            #expect(try side(["list", "--all"], ["KEEL_CONNECT": "unix:" + socket]) == "keeld")
            #expect(try side(["list", "--all", "--connect", "unix:" + socket], ["KEEL_CONNECT": "embed:" + state]) == "keeld", "--connect over KEEL_CONNECT")
            #expect(try side(["list", "--all", "--state", state], ["KEEL_CONNECT": "unix:" + socket]) == "embedded", "--state over KEEL_CONNECT")
            #expect(try side(["--connect", "embed:" + state, "list", "--all"], ["KEEL_SOCKET": socket]) == "embedded", "before the verb")
            #expect(try side(["--connect=unix:" + socket, "list", "--all"], [:]) == "keeld", "before the verb, with =")

            Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "tcp:localhost"]),
                                    "--connect 'tcp:localhost' is not a connection: use unix:PATH (keeld's socket) or embed:DIR (a state directory)")
            Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + socket, "--state", state]),
                                    "--state \(state) selects the embedded driver on that directory; it cannot be combined with --connect unix:\(socket)")
            Self.expectOneLineError(try ClientRun.keel(["list", "--connect", "unix:" + socket, "--cpu-map", "/usr/share/libvirt/cpu_map"]),
                                    "--cpu-map applies to the embedded driver; keeld uses its own CPU map")
            Self.expectOneLineError(try ClientRun.keel(["domcapabilities", "--emulator", "/bin/true", "--connect", "unix:" + socket]),
                                    "--emulator is not available through keeld")
            Self.expectOneLineError(try ClientRun.keel(["events", "--state", state]), "events come from keeld, and no keeld is in use")
        }
    }

    @Test("on a terminal, a save through keeld draws the progress bar from the job it polls; piped, it stays quiet")
    func progressOnTerminal() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let requests = Requests()
        let server = try FakeKeeld(path: directory + "/keeld.sock") { connection in
            connection.readRequest()
            requests.append(connection.requestLine)
            switch connection.requestLine {
            case "POST /v1/domains/web/save":
                // The save "runs" for a while; the client polls the job meanwhile.
                usleep(1_500_000)
                connection.reply(json: #"{"name": "web", "job": "save", "state": "shutoff", "file": "/tmp/web.img", "bytes": 1}"#)
            case "GET /v1/domains/web/job":
                connection.reply(json: """
                    {"name": "web", "job": {"operation": "save", "pid": 1, "status": "active", "elapsedMilliseconds": 300,
                     "dataTotal": 33554432, "dataProcessed": 16777216, "dataRemaining": 16777216, "memoryBandwidth": 104857600}}
                    """)
            default:
                connection.reply(status: 404, reason: "Not Found", json: #"{"error": {"code": "not-found", "message": "no such endpoint"}}"#)
            }
        }
        defer { server.stop() }
        let arguments = ["save", "web", "/tmp/web.img", "--connect", "unix:" + server.path]

        let piped = try ClientRun.keel(arguments)
        #expect(piped == ClientRun.Result(status: 0, stdout: "Domain 'web' saved to /tmp/web.img\n", stderr: ""))
        #expect(!requests.lines.contains("GET /v1/domains/web/job"), "nothing is polled when nobody sees it")

        let terminal = try Self.runOnTerminal(Keel.binary, arguments)
        #expect(terminal.status == 0)
        #expect(terminal.output.contains("Save [###############               ] 50% 16/32 MiB 100 MiB/s"), "\(terminal.output)")
        #expect(terminal.output.contains("Domain 'web' saved to /tmp/web.img"))
        #expect(requests.lines.contains("GET /v1/domains/web/job"))
    }

    /// Requests a fake server saw.
    final class Requests: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: [String] = []
        func append(_ line: String) { lock.withLock { stored.append(line) } }
        var lines: [String] { lock.withLock { stored } }
    }

    /// Runs a program with stdout and stderr on a pseudo-terminal; returns everything it wrote.
    static func runOnTerminal(_ program: String, _ arguments: [String], timeout: TimeInterval = 30) throws -> (status: Int32, output: String) {
        // posix_openpt and friends, spelled as the kernel takes them (glibc hides the names
        // without _XOPEN_SOURCE): /dev/ptmx, unlock (TIOCSPTLCK), number (TIOCGPTN).
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        var unlock: Int32 = 0
        var number: UInt32 = 0
        guard master >= 0, ioctl(master, 0x4004_5431, &unlock) == 0, ioctl(master, 0x8004_5430, &number) == 0 else {
            throw TestFailure("no pseudo-terminal: \(String(cString: strerror(errno)))")
        }
        let slavePath = "/dev/pts/\(number)"
        defer { close(master) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, slavePath, O_RDWR | O_NOCTTY, 0)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_addclose(&actions, master)
        let argv = [program] + arguments
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("KEEL_") }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for variable in environment { free(variable) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, program, &actions, nil, &cArguments, &environment)
        guard result == 0 else { throw TestFailure("cannot run \(program): \(String(cString: strerror(result)))") }
        var output = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        var exited = false
        while Date() < deadline {
            var descriptor = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 100) > 0 {
                let count = read(master, &buffer, buffer.count)
                if count > 0 { output.append(contentsOf: buffer[0..<count]) }
                // EIO once the child closed its side.
                if count <= 0 && exited { break }
            } else if exited {
                break
            }
            if !exited, waitpid(child, &status, WNOHANG) == child { exited = true }
        }
        if !exited {
            kill(child, SIGKILL)
            waitpid(child, &status, 0)
        }
        return ((status >> 8) & 0xff, String(decoding: output, as: UTF8.self))
    }
}
