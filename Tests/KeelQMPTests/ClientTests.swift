import Foundation
import KeelQMP
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("QMP.Client against a fake server")
struct ClientTests {
    @Test("a recorded QEMU session replays: negotiation, every reply and QEMU error, every event",
          arguments: try Transcript.all())
    func replay(transcript: Transcript) async throws {
        let server = try FakeQMPServer.replaying(transcript)
        let events = try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            #expect(client.greeting.version == .init(major: 7, minor: 2, micro: 22))
            #expect(client.greeting.capabilities == ["oob"])
            for (request, reply) in transcript.exchanges {
                let command = try #require(request["execute"]?.stringValue)
                let arguments = request["arguments"]?.objectValue
                if let expected = reply["return"] {
                    #expect(try await client.execute(command, arguments: arguments) == expected, "\(command)")
                } else {
                    let errorClass = try #require(reply["error"]?["class"]?.stringValue)
                    let desc = try #require(reply["error"]?["desc"]?.stringValue)
                    await #expect(throws: QMP.Error.commandFailed(class: errorClass, desc: desc)) {
                        try await client.execute(command, arguments: arguments)
                    }
                }
            }
            // QEMU closes the socket after quit; the event stream ends with it.
            var names: [String] = []
            for await event in client.events { names.append(event.name) }
            return names
        }
        #expect(events == transcript.eventNames)
        try await server.finished()
    }

    @Test("concurrent commands get their own replies when QEMU answers out of order between events")
    func outOfOrder() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            let first = try peer.readRequest().message
            let second = try peer.readRequest().message
            try peer.sendEvent("STOP")
            try peer.reply(to: second, ["answer": second["execute"] ?? nil])
            try peer.sendEvent("RESUME", data: ["reason": "test"])
            try peer.reply(to: first, ["answer": first["execute"] ?? nil])
            _ = try peer.waitForClose()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            async let a = client.execute("query-status")
            // Let the first request reach the socket before the second.
            try await Task.sleep(for: .milliseconds(50))
            async let b = client.execute("query-version")
            let (ra, rb) = try await (a, b)
            #expect(ra == ["answer": "query-status"])
            #expect(rb == ["answer": "query-version"])
            var iterator = client.events.makeAsyncIterator()
            #expect(await iterator.next()?.name == "STOP")
            let resume = await iterator.next()
            #expect(resume?.name == "RESUME")
            #expect(resume?.data == ["reason": "test"])
        }
        try await server.finished()
    }

    @Test("a QEMU error is thrown as data and the connection stays usable")
    func errorThenSuccess() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            let bad = try peer.readRequest().message
            try peer.sendError(to: bad, class: "GenericError", desc: "Parameter 'path' is missing")
            let good = try peer.readRequest().message
            try peer.reply(to: good, ["status": "running", "running": true])
            _ = try peer.waitForClose()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            await #expect(throws: QMP.Error.commandFailed(class: "GenericError", desc: "Parameter 'path' is missing")) {
                try await client.execute("qom-list")
            }
            let status = try await client.execute("query-status")
            #expect(status["running"]?.boolValue == true)
        }
        try await server.finished()
    }

    @Test("a command without a reply fails with .timeout at its deadline; the late reply is ignored")
    func deadline() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            let slow = try peer.readRequest().message
            Thread.sleep(forTimeInterval: 0.4)
            try peer.reply(to: slow, ["late": true])
            let next = try peer.readRequest().message
            try peer.reply(to: next, ["late": false])
            _ = try peer.waitForClose()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            let start = ContinuousClock.now
            await #expect(throws: QMP.Error.timeout) {
                try await client.execute("query-status", deadline: .milliseconds(150))
            }
            let waited = ContinuousClock.now - start
            #expect(waited >= .milliseconds(150) && waited < .seconds(2))
            try await Task.sleep(for: .milliseconds(400))
            #expect(client.isConnected)
            #expect(try await client.execute("query-version") == ["late": false])
        }
        try await server.finished()
    }

    @Test("when the server dies mid-command every pending command fails promptly with .disconnected")
    func serverDies() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            _ = try peer.readRequest()
            _ = try peer.readRequest()
            peer.hangUp()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5), commandDeadline: .seconds(30)) { client in
            let start = ContinuousClock.now
            async let a = Result(catching: { try await client.execute("migrate", arguments: ["uri": "fd:x"]) })
            async let b = Result(catching: { try await client.execute("query-migrate") })
            for result in await [a, b] {
                #expect(throws: QMP.Error.disconnected) { try result.get() }
            }
            #expect(ContinuousClock.now - start < .seconds(5))
            #expect(!client.isConnected)
            var iterator = client.events.makeAsyncIterator()
            #expect(await iterator.next() == nil)
            await #expect(throws: QMP.Error.disconnected) { try await client.execute("query-status") }
        }
        try await server.finished()
    }

    @Test("getfd carries the descriptor in SCM_RIGHTS with the command; add-fd reports the fd set")
    func fileDescriptorPassing() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            for expected in ["getfd", "add-fd"] {
                let (request, fds) = try peer.readRequest()
                guard request["execute"]?.stringValue == expected, fds.count == 1 else {
                    throw FakeQMPServer.Failure(description: "expected \(expected) with one fd, got \(request) with \(fds)")
                }
                var bytes = [UInt8](repeating: 0, count: 64)
                let count = read(fds[0], &bytes, bytes.count)
                _ = close(fds[0])
                let text = String(decoding: bytes[0..<max(count, 0)], as: UTF8.self)
                if expected == "getfd" {
                    try peer.reply(to: request, ["read": .string(text), "fdname": request["arguments"]?["fdname"] ?? nil])
                } else {
                    try peer.reply(to: request, ["fdset-id": 3, "fd": 27])
                }
            }
            _ = try peer.waitForClose()
        }
        func pipeWith(_ text: String) throws -> Int32 {
            var ends: [Int32] = [0, 0]
            try #require(pipe(&ends) == 0)
            let bytes = Array(text.utf8)
            try #require(write(ends[1], bytes, bytes.count) == bytes.count)
            _ = close(ends[1])
            return ends[0]
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            let first = try pipeWith("keel says hello")
            defer { _ = close(first) }
            let reply = try await client.execute("getfd", arguments: ["fdname": "migration"], fileDescriptors: [first])
            #expect(reply == ["read": "keel says hello", "fdname": "migration"])

            let second = try pipeWith("fdset data")
            defer { _ = close(second) }
            let added = try await client.addFileDescriptor(second, opaque: "disk")
            #expect(added == QMP.AddedFileDescriptor(fdset: 3, fd: 27))

            await #expect(throws: QMP.Error.self) { try await client.sendFileDescriptor(-1, name: "bad") }
        }
        try await server.finished()
    }

    @Test("a server that never greets fails the connect with .timeout at the deadline")
    func silentServer() async throws {
        let server = try FakeQMPServer { peer in
            _ = try peer.waitForClose()
        }
        let start = ContinuousClock.now
        await #expect(throws: QMP.Error.timeout) {
            try await QMP.Client.withConnection(to: server.path, deadline: .milliseconds(300)) { _ in }
        }
        #expect(ContinuousClock.now - start < .seconds(3))
        try await server.finished()
    }

    @Test("garbage from the server fails the pending command with a protocol violation")
    func violation() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            _ = try peer.readRequest()
            try peer.sendLine("this is not QMP")
            _ = try peer.waitForClose()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            do {
                try await client.execute("query-status")
                Issue.record("the command succeeded")
            } catch QMP.Error.protocolViolation {
            } catch {
                Issue.record("unexpected error \(error)")
            }
            #expect(!client.isConnected)
        }
        try await server.finished()
    }

    @Test("a refused capabilities negotiation surfaces QEMU's error")
    func refusedNegotiation() async throws {
        let server = try FakeQMPServer { peer in
            try peer.greet()
            let request = try peer.readRequest().message
            try peer.sendError(to: request, class: "GenericError", desc: "Capabilities negotiation is already complete")
            _ = try peer.waitForClose()
        }
        await #expect(throws: QMP.Error.commandFailed(class: "GenericError", desc: "Capabilities negotiation is already complete")) {
            try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { _ in }
        }
        try await server.finished()
    }

    @Test("cancelling a waiting command throws CancellationError and leaves the connection usable")
    func cancellation() async throws {
        let server = try FakeQMPServer { peer in
            try peer.handshake()
            let ignored = try peer.readRequest().message
            let next = try peer.readRequest().message
            try peer.reply(to: ignored, ["late": true])
            try peer.reply(to: next, ["ok": true])
            _ = try peer.waitForClose()
        }
        try await QMP.Client.withConnection(to: server.path, deadline: .seconds(5)) { client in
            let task = Task { try await client.execute("query-status") }
            try await Task.sleep(for: .milliseconds(100))
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(try await client.execute("query-version") == ["ok": true])
        }
        try await server.finished()
    }

    @Test("connecting waits for a socket that appears late, and a missing one fails at the deadline")
    func connectRetry() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.cleanup() }
        await #expect(throws: QMP.Error.systemCallFailed(call: "connect", errno: ENOENT)) {
            try await QMP.Client.withConnection(to: directory.file("absent.sock"), deadline: .milliseconds(200)) { _ in }
        }
        await #expect(throws: QMP.Error.self) {
            try await QMP.Client.withConnection(to: "/" + String(repeating: "x", count: 200), deadline: .milliseconds(200)) { _ in }
        }
    }
}

extension Result where Failure == any Error {
    /// Captures the outcome of an async throwing call.
    init(catching body: () async throws -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}
