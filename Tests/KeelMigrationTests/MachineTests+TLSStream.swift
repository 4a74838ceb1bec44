import KeelDomain
import KeelMigration
import Testing

/// `tlsStream`: never a plaintext stream for a guest the source wanted carried over TLS.
extension MachineTests {
    @Test("the source refuses --tls-stream with a destination speaking protocol 1, before Prepare")
    func tlsStreamOlderDestination() throws {
        var source = try source(MigrationOptions(tlsStream: true))
        _ = source.handle(.start)
        let actions = source.handle(.received(.init(.v1, .beginReply(.init(versions: [.v1], host: Guest.hostB)))))
        #expect(source.phase == .failed)
        #expect(source.error?.code == .unsupported)
        #expect(source.error?.message.contains("protocol 1, which cannot carry the stream over TLS") == true)
        guard case .abort = sentMessage(actions)?.body else {
            Issue.record("no abort, or a prepare: \(actions)")
            return
        }
    }

    @Test("the source refuses a prepare-reply that does not confirm the TLS stream (an older keeld) and tells the destination")
    func tlsStreamUnconfirmed() throws {
        var source = try source(MigrationOptions(tlsStream: true))
        _ = source.handle(.start)
        _ = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2, .v1], host: Guest.hostB)))))
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "b", hostUUID: Guest.hostB.uuid).formatted()
        let refused = source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:b:1")))))
        #expect(source.phase == .failed)
        #expect(!refused.contains { if case .startMigration = $0 { true } else { false } })
        guard case .abort(let error) = sentMessage(refused)?.body else {
            Issue.record("no abort: \(refused)")
            return
        }
        #expect(error.code == .unsupported)

        var confirmed = try self.source(MigrationOptions(tlsStream: true))
        _ = confirmed.handle(.start)
        _ = confirmed.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2, .v1], host: Guest.hostB)))))
        let migrate = confirmed.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:b:1", tlsStream: true)))))
        #expect(migrate.first == .startMigration(uri: "tcp:b:1", .init()))
    }

    @Test("a destination without TLS material refuses a TLS stream in Prepare, before any QEMU; one with it confirms in prepare-reply")
    func tlsStreamDestination() throws {
        let cookie = try Fixtures.cookie("keel-begin-v2")
        let (refusing, actions) = try prepared(cookie: cookie, options: MigrationOptions(tlsStream: true))
        #expect(refusing.phase == .failed)
        guard case .abort(let error) = sentMessage(actions)?.body else {
            Issue.record("no abort: \(actions)")
            return
        }
        #expect(error.code == .unsupported)
        #expect(error.message.contains("no TLS identity"))

        var accepting = MigrationDestination(configuration: .init(host: Guest.hostB, tlsStream: true))
        _ = accepting.handle(.received(.init(.v2, .begin(.init(versions: [.v2], domain: Self.identity, host: Guest.hostA)))))
        let decide = accepting.handle(.received(.init(.v2, .prepare(.init(xml: Guest.xml, cookie: cookie, options: MigrationOptions(tlsStream: true))))))
        #expect(decide.count == 1)
        let start = accepting.handle(.cpuDecided(CPUVerdict()))
        guard case .startQEMU(_, _, let tls)? = start.first else {
            Issue.record("no start: \(start)")
            return
        }
        #expect(tls)
        _ = accepting.handle(.qemuStarted)
        _ = accepting.handle(.liveCPUChecked)
        let reply = accepting.handle(.listening(uri: "tcp:b:1"))
        guard case .prepareReply(let body) = sentMessage(reply)?.body else {
            Issue.record("no prepare-reply: \(reply)")
            return
        }
        #expect(body.tlsStream)
        #expect(try MigrationMessage(json: Array(MigrationFrame.encode(MigrationMessage(.v2, .prepareReply(body))).dropFirst(4))) == MigrationMessage(.v2, .prepareReply(body)),
                "tlsStream survives the wire")
    }
}
