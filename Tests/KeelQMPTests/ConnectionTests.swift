import KeelQMP
import Testing

private let greetingLine = #"{"QMP":{"version":{"qemu":{"micro":22,"minor":2,"major":7},"package":"Debian"},"capabilities":["oob"]}}"#

private func line(_ text: String) -> [UInt8] { Array(text.utf8) }

/// A connection that has been greeted and negotiated.
private func readyConnection() throws -> QMP.Connection {
    var connection = QMP.Connection()
    _ = connection.receive(line: line(greetingLine))
    let ready = connection.receive(line: line(#"{"return":{},"id":0}"#))
    guard case .ready = ready else { throw QMP.Error.invalidState("not ready: \(String(describing: ready))") }
    return connection
}

@Suite("QMP.Connection state machine")
struct ConnectionTests {
    @Test("the greeting is answered with qmp_capabilities, and its reply makes the connection ready")
    func negotiation() throws {
        var connection = QMP.Connection()
        #expect(connection.state == .awaitingGreeting)
        let first = connection.receive(line: line(greetingLine))
        #expect(first == .send(line("{\"execute\":\"qmp_capabilities\",\"id\":0}\r\n")))
        #expect(connection.state == .negotiating)
        let second = connection.receive(line: line(#"{"return":{},"id":0}"#))
        let greeting = QMP.Greeting(version: .init(major: 7, minor: 2, micro: 22), package: "Debian", capabilities: ["oob"])
        #expect(second == .ready(greeting))
        #expect(connection.state == .ready)
        #expect(greeting.version > .init(major: 7, minor: 1, micro: 99))
    }

    @Test("commands are refused before negotiation and after close")
    func executeStates() throws {
        #expect(throws: QMP.Error.invalidState("capabilities are not negotiated yet")) {
            var connection = QMP.Connection()
            _ = try connection.execute("query-status")
        }
        var ready = try readyConnection()
        _ = ready.close()
        #expect(throws: QMP.Error.disconnected) {
            var closed = ready
            _ = try closed.execute("query-status")
        }
    }

    @Test("a command is encoded with its arguments and a fresh id")
    func encoding() throws {
        var connection = try readyConnection()
        let first = try connection.execute("qom-get", arguments: ["path": "/machine/unattached/device[0]", "property": "feature-words"])
        #expect(first.id == 1)
        #expect(String(decoding: first.bytes, as: UTF8.self)
            == "{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"/machine/unattached/device[0]\",\"property\":\"feature-words\"},\"id\":1}\r\n")
        let second = try connection.execute("query-status")
        #expect(second.id == 2)
        #expect(connection.pending == [1: "qom-get", 2: "query-status"])
    }

    @Test("replies are correlated by id in any order; events pass through between them")
    func correlation() throws {
        var connection = try readyConnection()
        let a = try connection.execute("query-status").id
        let b = try connection.execute("query-version").id
        #expect(connection.receive(line: line(#"{"return":{"version":1},"id":\#(b)}"#)) == .reply(id: b, result: .success(["version": 1])))
        let event = connection.receive(line: line(#"{"timestamp":{"seconds":10,"microseconds":20},"event":"STOP"}"#))
        #expect(event == .event(QMP.Event(name: "STOP", timestamp: .init(seconds: 10, microseconds: 20))))
        #expect(connection.receive(line: line(#"{"return":{"status":"paused"},"id":\#(a)}"#)) == .reply(id: a, result: .success(["status": "paused"])))
        #expect(connection.pending.isEmpty)
    }

    @Test("a QEMU error is a reply carrying class and desc, and the connection stays usable")
    func errorsAsData() throws {
        var connection = try readyConnection()
        let id = try connection.execute("keel-no-such-command").id
        let reply = connection.receive(line: line(#"{"id":\#(id),"error":{"class":"CommandNotFound","desc":"The command keel-no-such-command has not been found"}}"#))
        #expect(reply == .reply(id: id, result: .failure(.commandFailed(class: "CommandNotFound", desc: "The command keel-no-such-command has not been found"))))
        #expect(connection.state == .ready)
    }

    @Test("event data is kept as an object")
    func eventData() throws {
        var connection = try readyConnection()
        let action = connection.receive(line: line(#"{"timestamp":{"seconds":1,"microseconds":2},"event":"SHUTDOWN","data":{"guest":false,"reason":"host-qmp-quit"}}"#))
        guard case .event(let event) = action else {
            Issue.record("expected an event, got \(String(describing: action))")
            return
        }
        #expect(event.name == "SHUTDOWN")
        #expect(event.data == ["guest": false, "reason": "host-qmp-quit"])
    }

    @Test("a late reply to an abandoned command is dropped silently")
    func abandoned() throws {
        var connection = try readyConnection()
        let id = try connection.execute("query-status").id
        let first = connection.abandon(id)
        let second = connection.abandon(id)
        #expect(first)
        #expect(!second)
        #expect(connection.receive(line: line(#"{"return":{},"id":\#(id)}"#)) == nil)
        #expect(connection.state == .ready)
    }

    @Test("protocol violations close the connection and hand back every pending id", arguments: [
        #"{"return":{},"id":99}"#,
        #"{"return":{}}"#,
        #"{"error":{"class":"GenericError"},"id":1}"#,
        #"{"something":"else"}"#,
        #"[1,2]"#,
        #"not json"#,
        #"{"event":7}"#,
        #"{"event":"X","data":[1]}"#,
        greetingLine,
    ])
    func violations(text: String) throws {
        var connection = try readyConnection()
        let a = try connection.execute("query-status").id
        let b = try connection.execute("query-version").id
        let action = connection.receive(line: line(text))
        guard case .close(let error, let pending) = action else {
            Issue.record("expected close, got \(String(describing: action))")
            return
        }
        guard case .protocolViolation = error else {
            Issue.record("expected a protocol violation, got \(error)")
            return
        }
        #expect(pending == [a, b])
        #expect(connection.state == .closed)
        #expect(connection.receive(line: line(#"{"return":{},"id":1}"#)) == nil)
    }

    @Test("a refused negotiation closes with QEMU's error as data")
    func refusedNegotiation() {
        var connection = QMP.Connection()
        _ = connection.receive(line: line(greetingLine))
        let action = connection.receive(line: line(#"{"error":{"class":"GenericError","desc":"no"},"id":0}"#))
        #expect(action == .close(error: .commandFailed(class: "GenericError", desc: "no"), pending: []))
    }

    @Test("a greeting without a version, or a reply before any greeting, is a violation")
    func badStart() {
        var noVersion = QMP.Connection()
        guard case .close(.protocolViolation, _)? = noVersion.receive(line: line(#"{"QMP":{"capabilities":[]}}"#)) else {
            Issue.record("a greeting without version was accepted")
            return
        }
        var early = QMP.Connection()
        guard case .close(.protocolViolation, _)? = early.receive(line: line(#"{"return":{},"id":0}"#)) else {
            Issue.record("a reply before the greeting was accepted")
            return
        }
    }

    @Test("close() hands back the pending ids once")
    func close() throws {
        var connection = try readyConnection()
        let a = try connection.execute("stop").id
        let b = try connection.execute("cont").id
        #expect(connection.close() == [a, b])
        #expect(connection.close().isEmpty)
    }

    @Test("recorded QEMU sessions replay through the state machine: same requests, same replies and events",
          arguments: try Transcript.all())
    func transcriptReplay(transcript: Transcript) throws {
        var connection = QMP.Connection()
        var expectedRequests: [[UInt8]] = []
        var events: [String] = []
        var replies = 0
        for record in transcript.records {
            switch record.direction {
            case .fromQEMU:
                switch connection.receive(line: line(record.line)) {
                case .send(let bytes)?: expectedRequests.append(bytes)
                case .ready?: break
                case .reply(let id, _)?:
                    #expect(id == record.message["id"]?.uint64Value)
                    replies += 1
                case .event(let event)?: events.append(event.name)
                case .close(let error, _)?: Issue.record("closed on \(record.line): \(error)")
                case nil: Issue.record("no action for \(record.line)")
                }
            case .toQEMU:
                guard let command = record.message["execute"]?.stringValue else { continue }
                if command == "qmp_capabilities" {
                    #expect(try QMP.Value(parsing: expectedRequests.removeFirst()) == record.message)
                    continue
                }
                let sent = try connection.execute(command, arguments: record.message["arguments"]?.objectValue)
                #expect(try QMP.Value(parsing: sent.bytes) == record.message)
            }
        }
        #expect(replies == transcript.exchanges.count)
        #expect(events == transcript.eventNames)
        #expect(events == ["RESUME", "STOP", "RESUME", "SHUTDOWN"])
    }
}
