import Foundation
import KeelTestSupport
import Testing

/// `keel events`: the NDJSON stream of `GET /v1/events`, printed as virsh prints events or as
/// JSON lines, until --count, --timeout or an interrupt.
@Suite("keel events", .serialized)
struct EventsCLITests {
    /// What a keeld with events streams: lines split across chunks on purpose.
    static let stream: [String] = [
        #"{"time": "2025-11-26T22:50:01.250Z", "domain": "web", "event": "defined", "detail": "added"}"# + "\n"
            + #"{"time": "2025-11-26T22:50:02Z", "domain": "web", "event": "started", "detail": "booted"}"# + "\n{\"time\": \"2025-11-26T22:50:03Z\", ",
        #""domain": "web", "event": "paused"}"# + "\n\n",
        #"{"detail": "user", "domain": "web", "event": "resumed", "time": "2025-11-26T22:50:04Z", "extra": 1}"# + "\n",
        #"{"time": "2025-11-26T22:50:05Z", "domain": "web", "event": "job-progress", "job": {"operation": "save", "bytesTotal": 33554432, "bytesProcessed": 16777216, "bytesRemaining": 16777216, "throughput": 104857600, "elapsedMs": 153}}"# + "\n",
        #"{"time": "2025-11-26T22:50:06Z", "domain": "web", "event": "saved"}"# + "\n",
        #"{"time": "2025-11-26T22:50:07Z", "domain": "web", "event": "restored", "detail": "cookie CPU"}"# + "\n",
        #"{"time": "2025-11-26T22:50:08Z", "domain": "web", "event": "crashed"}"# + "\n",
        #"{"time": "2025-11-26T22:50:09Z", "domain": "web", "event": "migrated-out"}"# + "\n",
    ]

    static let human = """
        event 'lifecycle' for domain 'web': Defined Added
        event 'lifecycle' for domain 'web': Started Booted
        event 'lifecycle' for domain 'web': Suspended
        event 'lifecycle' for domain 'web': Resumed User
        event 'job-progress' for domain 'web': Save: 16.000 MiB of 32.000 MiB (50%), 16.000 MiB remaining, 100.000 MiB/s, 153 ms
        event 'lifecycle' for domain 'web': Stopped Saved
        event 'lifecycle' for domain 'web': Started Restored (cookie CPU)
        event 'lifecycle' for domain 'web': Crashed
        event 'migrated-out' for domain 'web'

        """

    /// A fake keeld streaming `stream`, then keeping the connection open (or ending it).
    static func server(_ directory: String, endStream: Bool = false, requests: ClientConnectionTests.Requests) throws -> FakeKeeld {
        try FakeKeeld(path: directory + "/keeld.sock") { connection in
            connection.readRequest()
            requests.append(connection.requestLine)
            guard connection.requestLine.hasPrefix("GET /v1/events") else {
                connection.reply(status: 404, reason: "Not Found", json: #"{"error": {"code": "not-found", "message": "no such endpoint"}}"#)
                return
            }
            connection.write("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in Self.stream {
                connection.chunk(piece)
                usleep(20_000)
            }
            if endStream {
                connection.write("0\r\n\r\n")
                return
            }
            connection.waitForClose()
        }
    }

    @Test("every event of the stream is one line in virsh's wording, or one JSON object per line; --count stops it")
    func printsEvents() throws {
        let directory = ModeRoot.temporaryDirectory("events")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let requests = ClientConnectionTests.Requests()
        let server = try Self.server(directory, requests: requests)
        defer { server.stop() }

        let human = try ClientRun.keel(["events", "--count", "9", "--connect", "unix:" + server.path], timeout: 30)
        #expect(human == ClientRun.Result(status: 0, stdout: Self.human, stderr: ""))

        let json = try ClientRun.keel(["events", "--domain", "web", "--json", "--count", "5"], environment: ["KEEL_SOCKET": server.path], timeout: 30)
        #expect(json.status == 0, "\(json.stderr)")
        let lines = json.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 5)
        #expect(lines.first == #"{"time": "2025-11-26T22:50:01.250Z", "domain": "web", "event": "defined", "detail": "added"}"#)
        #expect(lines[2] == #"{"time": "2025-11-26T22:50:03Z", "domain": "web", "event": "paused"}"#)
        #expect(lines[4] == #"{"time": "2025-11-26T22:50:05Z", "domain": "web", "event": "job-progress", "job": {"operation": "save", "bytesTotal": 33554432, "bytesProcessed": 16777216, "bytesRemaining": 16777216, "throughput": 104857600, "elapsedMs": 153}}"#)
        for line in lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) != nil, "\(line)")
        }
        #expect(requests.lines.contains("GET /v1/events?domain=web"), "\(requests.lines)")
        #expect(requests.lines.contains("GET /v1/events"))
    }

    @Test("--timeout ends a quiet stream with exit 0; SIGINT exits 0; a stream keeld ends and an old keeld without events are errors")
    func endings() throws {
        let directory = ModeRoot.temporaryDirectory("events")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let requests = ClientConnectionTests.Requests()
        let server = try Self.server(directory, requests: requests)

        let started = Date()
        let timed = try ClientRun.keel(["events", "--timeout", "1.5", "--connect", "unix:" + server.path], timeout: 30)
        #expect(timed == ClientRun.Result(status: 0, stdout: Self.human, stderr: ""))
        #expect(Date().timeIntervalSince(started) >= 1.4)

        let (process, stdout, _) = try ClientRun.spawn(["events", "--connect", "unix:" + server.path], directory: directory)
        _ = try eventually { (try? String(contentsOfFile: stdout, encoding: .utf8))?.contains("Crashed") == true ? true : nil }
        process.signal(SIGINT)
        #expect(ClientRun.wait(process, timeout: 10) == 0, "an interrupt is the usual way to stop following")
        server.stop()

        let ending = try Self.server(directory, endStream: true, requests: requests)
        defer { ending.stop() }
        let ended = try ClientRun.keel(["events", "--connect", "unix:" + ending.path], timeout: 30)
        #expect(ended.status == 1)
        #expect(ended.stdout == Self.human)
        #expect(ended.stderr == "error: keeld ended the event stream (did it stop?)\n")

        let old = try FakeKeeld(path: directory + "/old.sock") { connection in
            connection.readRequest()
            connection.reply(status: 404, reason: "Not Found", json: #"{"error": {"code": "not-found", "message": "no such endpoint: GET /v1/events"}}"#)
        }
        defer { old.stop() }
        #expect(try ClientRun.keel(["events", "--connect", "unix:" + old.path])
            == ClientRun.Result(status: 1, stdout: "", stderr: "error: no such endpoint: GET /v1/events\n"))

        let garbage = try FakeKeeld(path: directory + "/garbage.sock") { connection in
            connection.readRequest()
            connection.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            connection.chunk("{\"time\": 1}\n")
            connection.waitForClose()
        }
        defer { garbage.stop() }
        let bad = try ClientRun.keel(["events", "--connect", "unix:" + garbage.path])
        #expect(bad.status == 1)
        #expect(bad.stderr.hasPrefix("error: keeld sent an event that is not the expected JSON: "), "\(bad.stderr)")

        for (arguments, message) in [(["--count", "0"], "--count must be at least 1"), (["--timeout=-1"], "--timeout must be a positive number"),
                                     (["--domain", "../x"], "invalid domain name '../x'")] {
            let refused = try ClientRun.keel(["events", "--connect", "unix:" + garbage.path] + arguments)
            #expect(refused.status == 1)
            #expect(refused.stderr.contains(message), "\(refused.stderr)")
        }
    }

    @Test("against a real keeld: defining and starting a domain are followed as they happen")
    func realDaemon() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await ModeRoot.withBoth { _, client in
            let probe = try client.keel(["events", "--timeout", "0.5"])
            #expect(probe.status == 0, "keeld serves GET /v1/events: \(probe.stderr)")
            let (process, stdout, stderr) = try ClientRun.spawn(
                ["events", "--domain", "web", "--json", "--count", "2", "--timeout", "60", "--connect", client.connect], directory: client.root
            )
            try await Task.sleep(for: .milliseconds(500))
            #expect(try client.keel(["define", try client.write(client.domainXML(name: "web"), to: "web.xml")]).status == 0)
            #expect(try client.keel(["start", "web"]).status == 0)
            #expect(ClientRun.wait(process, timeout: 60) == 0, "\((try? String(contentsOfFile: stderr, encoding: .utf8)) ?? "")")
            let lines = try String(contentsOfFile: stdout, encoding: .utf8).split(separator: "\n")
            let events = lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            #expect(events.map { $0["event"] as? String } == ["defined", "started"], "\(lines)")
            #expect(events.allSatisfy { $0["domain"] as? String == "web" && ($0["time"] as? String)?.isEmpty == false })
        }
    }
}
