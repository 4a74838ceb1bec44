import Foundation
import Testing

/// Bad requests get a clear error with a code, and keeld keeps serving.
@Suite("keeld: bad requests", .serialized)
struct RequestErrorTests {
    @Test("unknown domains and paths, malformed JSON, invalid XML, oversized bodies and wrong methods: a status, a code, and the daemon keeps serving")
    func badRequests() async throws {
        try await Keeld.with { keeld in
            let unknown = try keeld.get("/v1/domains/nosuch")
            #expect(unknown.status == 404)
            #expect(unknown.errorCode == "not-found")
            #expect(unknown.errorMessage.contains("nosuch"))
            #expect(try keeld.post("/v1/domains/nosuch/start").status == 404)
            #expect(try keeld.post("/v1/domains/nosuch/destroy").status == 409, "destroying a shut-off domain is an invalid state")
            #expect(try keeld.get("/v1/domains/nosuch/xml").errorCode == "not-found")
            #expect(try keeld.get("/v2/everything").errorCode == "not-found")

            let malformed = try UnixHTTP.request(socket: keeld.socket, method: "POST", path: "/v1/domains", body: Data("{\"xml\": ".utf8))
            #expect(malformed.status == 400)
            #expect(malformed.errorCode == "bad-request")
            #expect(malformed.errorMessage.contains("malformed JSON"))
            let missing = try keeld.post("/v1/domains", ["nothing": true])
            #expect(missing.status == 400)
            #expect(missing.errorMessage.contains("'xml'"), "\(missing.errorMessage)")
            let invalidXML = try keeld.post("/v1/domains", ["xml": "<domain type='qemu'><name>x</name>"])
            #expect(invalidXML.status == 400)
            #expect(invalidXML.errorCode == "invalid-argument")
            let badName = try keeld.get("/v1/domains/..")
            #expect([400, 404].contains(badName.status))
            let badFlag = try keeld.get("/v1/domains/nosuch/xml?inactive=maybe")
            #expect(badFlag.status == 400)
            let relative = try keeld.post("/v1/restore", ["file": "relative.img"])
            #expect(relative.status == 400)
            #expect(relative.errorMessage.contains("absolute"))
            let notAnImage = try keeld.post("/v1/restore", ["file": "/dev/null", "dryRun": true])
            #expect(notAnImage.status == 400, "\(notAnImage.text)")
            let badVirtType = try keeld.get("/v1/domcapabilities?virttype=xen")
            #expect(badVirtType.status == 400)

            let oversized = try UnixHTTP.request(
                socket: keeld.socket, method: "POST", path: "/v1/domains",
                body: Data(("{\"xml\": \"" + String(repeating: "x", count: 2 << 20) + "\"}").utf8)
            )
            #expect(oversized.status == 413)
            #expect(oversized.errorCode == "payload-too-large")

            let wrongMethod = try UnixHTTP.request(socket: keeld.socket, method: "PUT", path: "/v1/domains")
            #expect(wrongMethod.status == 405)
            #expect(wrongMethod.errorCode == "method-not-allowed")
            #expect(wrongMethod.headers["allow"] == "GET, POST")
            #expect(try UnixHTTP.request(socket: keeld.socket, method: "DELETE", path: "/v1/domains/x/start").status == 405)

            #expect(try keeld.get("/v1/domains").status == 200, "the daemon still serves")
            #expect(keeld.isRunning)
        }
    }

    @Test("a client that asks first (Expect: 100-continue, as curl does for bodies over 1 KiB) is told to go on at once")
    func expectContinue() async throws {
        try await Keeld.with { keeld in
            let fd = try UnixHTTP.connect(keeld.socket, timeout: 5)
            defer { close(fd) }
            let body = Array("{\"xml\": \"<domain\"}".utf8)
            let head = "POST /v1/domains HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(body.count)\r\nExpect: 100-continue\r\n\r\n"
            #expect(send(fd, head, head.utf8.count, Int32(MSG_NOSIGNAL)) == head.utf8.count)
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = recv(fd, &buffer, buffer.count, 0)  // SO_RCVTIMEO: 5 s
            let interim = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
            #expect(interim.hasPrefix("HTTP/1.1 100 Continue\r\n"), "\(interim)")
            #expect(send(fd, body, body.count, Int32(MSG_NOSIGNAL)) == body.count)
            var rest = Data()
            while true {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count <= 0 { break }
                rest.append(contentsOf: buffer[0..<count])
            }
            let response = try UnixHTTP.parse(rest)
            #expect(response.status == 400, "the body was read and judged: \(response.text)")
            #expect(response.errorCode == "invalid-argument")
        }
    }

    @Test("pipelined requests: answered in order, a body that arrives late still counts, thousands in one write do not overflow anything, and nothing behind 'Connection: close' or a 413 runs")
    func pipelining() async throws {
        try await Keeld.with { keeld in
            func exchange(_ parts: [String], pause: UInt32 = 0) throws -> [UnixHTTP.Response] {
                let fd = try UnixHTTP.connect(keeld.socket, timeout: 30)
                defer { close(fd) }
                for (index, part) in parts.enumerated() {
                    if index > 0 { usleep(pause) }
                    let bytes = Array(part.utf8)
                    var offset = 0
                    while offset < bytes.count {
                        let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        guard sent > 0 else { break }
                        offset += sent
                    }
                }
                var received = Data()
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let count = recv(fd, &buffer, buffer.count, 0)
                    if count <= 0 { break }
                    received.append(contentsOf: buffer[0..<count])
                }
                return try UnixHTTP.parseAll(received)
            }
            let get = "GET /v1/domains HTTP/1.1\r\nHost: keeld\r\n\r\n"
            // A job's answer (a task) first, then a request whose body's last byte comes 300 ms later.
            let answers = try exchange([
                get + "POST /v1/domains HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{",
                "}",
            ], pause: 300_000)
            #expect(answers.map(\.status) == [200, 400], "\(answers.map(\.text))")
            #expect(answers.last?.errorMessage.contains("'xml'") == true, "the late body was read whole")

            // Four thousand inline answers in one batch.
            let many = String(repeating: "GET /v1/domains/nosuch HTTP/1.1\r\nHost: keeld\r\n\r\n", count: 4000)
                + "GET /v1/domains/nosuch HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\n\r\n"
            let all = try exchange([many])
            #expect(all.count == 4001)
            #expect(all.allSatisfy { $0.status == 404 })
            #expect(keeld.isRunning)

            // Nothing runs behind an answer that closed the connection.
            let xml = keeld.domainXML(name: "behind-close").replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\"", with: "\\\"")
            let define = "{\"xml\": \"\(xml)\"}"
            let defineRequest = "POST /v1/domains HTTP/1.1\r\nHost: keeld\r\nContent-Type: application/json\r\nContent-Length: \(define.utf8.count)\r\n\r\n" + define
            let closed = try exchange(["GET /v1/domains/nosuch HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\n\r\n" + defineRequest])
            // NIO's HTTP parser itself may answer bytes after a 'Connection: close' request with
            // an empty 400; nothing else may come.
            #expect(closed.first?.status == 404)
            #expect(closed.dropFirst().allSatisfy { $0.status == 400 && $0.body.isEmpty }, "\(closed.map(\.text))")
            let refused = try exchange(["POST /v1/domains HTTP/1.1\r\nHost: keeld\r\nContent-Length: 2000000\r\n\r\n{}" + defineRequest])
            #expect(refused.map(\.status) == [413])
            #expect(try keeld.get("/v1/domains/behind-close").status == 404, "the define behind them never ran")
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "behind-close")]).status == 201, "the same define on its own does")
        }
    }

    @Test("a client that pipelines without reading: keeld stops reading it instead of queueing answers, and a graceful stop does not wait for it")
    func clientThatNeverReads() async throws {
        try await Keeld.with { keeld in
            guard let pid = keeld.pid else { Issue.record("keeld has no pid"); return }
            func rssMiB() -> Int {
                let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
                return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
            }
            let before = rssMiB()
            // Up to 40 MB of pipelined requests for the 80 KB OpenAPI document (about 70 GB of
            // answers if all were queued), never reading; sends stop when keeld stops reading
            // (SO_SNDTIMEO 5 s).
            let fd = try UnixHTTP.connect(keeld.socket, timeout: 5)
            defer { close(fd) }
            let batch = Array(String(repeating: "GET /openapi.json HTTP/1.1\r\nHost: keeld\r\n\r\n", count: 1000).utf8)
            var sent = 0
            while sent < 40_000_000 {
                let count = batch.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count <= 0 { break }
                sent += count
            }
            let after = rssMiB()
            #expect(sent < 40_000_000, "keeld kept reading \(sent) bytes of requests while their answers went unread")
            #expect(after - before < 64, "keeld grew from \(before) to \(after) MiB")
            #expect(try keeld.get("/v1/domains").status == 200, "other clients are served meanwhile")
            // The stuck connection holds an unanswered request: a graceful stop closes it.
            let started = Date()
            #expect(keeld.stop(SIGTERM, timeout: 30) == 0, "\(keeld.log().suffix(2000))")
            #expect(Date().timeIntervalSince(started) < 15, "the stop waited for the client")
        }
    }

    @Test("the socket is root-only (0600); a non-root peer cannot connect, and is refused by its credentials even through a loosened socket")
    func socketAccess() async throws {
        try await Keeld.with { keeld in
            var info = stat()
            #expect(lstat(keeld.socket, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600)
            #expect(info.st_uid == geteuid())
            guard geteuid() == 0 else { print("SKIP: not root; a non-root peer cannot be simulated"); return }
            guard let asNobody = NobodyClient.command else { print("SKIP: \(NobodyClient.unavailableReason)"); return }
            let denied = try NobodyClient.get(asNobody, socket: keeld.socket, path: "/v1/domains")
            #expect(denied.status != 0 && denied.output.contains("PermissionError"), "\(denied)")
            chmod(keeld.socket, 0o666)
            let refused = try NobodyClient.get(asNobody, socket: keeld.socket, path: "/v1/domains")
            #expect(refused.output.hasPrefix("HTTP/1.1 403"), "\(refused)")
            #expect(refused.output.contains("\"forbidden\""), "\(refused)")
            #expect(try keeld.get("/v1/domains").status == 200, "root still gets in")
        }
    }

    @Test("--group opens the socket (0660) and the API to that group")
    func groupAccess() async throws {
        guard geteuid() == 0 else { print("SKIP: not root; the socket's group cannot be set"); return }
        guard let group = getgrgid(65534).map({ String(cString: $0.pointee.gr_name) }) else {
            print("SKIP: no group with id 65534 to grant access to"); return
        }
        try await Keeld.with(arguments: ["--group", group]) { keeld in
            var info = stat()
            #expect(lstat(keeld.socket, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o660)
            #expect(info.st_gid == 65534)
            guard let asNobody = NobodyClient.command else { print("SKIP: \(NobodyClient.unavailableReason)"); return }
            let allowed = try NobodyClient.get(asNobody, socket: keeld.socket, path: "/v1/domains")
            #expect(allowed.output.hasPrefix("HTTP/1.1 200"), "\(allowed)")
        }
    }
}

/// Runs an HTTP GET over a Unix socket as user nobody (uid and gid 65534).
enum NobodyClient {
    static let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The command prefix that drops to nobody, or nil.
    static let command: [String]? = {
        guard python != nil else { return nil }
        for setpriv in ["/usr/bin/setpriv", "/bin/setpriv"] where FileManager.default.isExecutableFile(atPath: setpriv) {
            return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        }
        for runuser in ["/usr/sbin/runuser", "/sbin/runuser"] where FileManager.default.isExecutableFile(atPath: runuser) {
            return [runuser, "-u", "nobody", "--"]
        }
        return nil
    }()

    static var unavailableReason: String {
        python == nil ? "python3 is not installed; no client can run as nobody" : "neither setpriv nor runuser exists; nothing can run as nobody"
    }

    static let script = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        s.sendall(("GET %s HTTP/1.1\\r\\nHost: keeld\\r\\nConnection: close\\r\\n\\r\\n" % sys.argv[2]).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        sys.stdout.write(data.decode())
        """

    static func get(_ command: [String], socket: String, path: String) throws -> (status: Int32, output: String) {
        let argv = command + [python ?? "python3", "-c", script, socket, path]
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("keeld-nobody-\(UUID().uuidString.prefix(8)).out").path
        defer { unlink(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, argv[0], &actions, nil, &cArguments, environ)
        guard result == 0 else { throw UnixHTTP.Failure(description: "cannot run \(argv[0]): \(String(cString: strerror(result)))") }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        return (status, text)
    }
}
