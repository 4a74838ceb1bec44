import KeelCPU
import KeelDomain
import KeelMigration
import Testing

@Suite("the source and destination state machines, step by step")
struct MachineTests {
    static let identity = MigrationMessage.DomainIdentity(name: "web-1", uuid: Guest.uuid)

    func source(_ options: MigrationOptions = MigrationOptions(), running: Bool = true) throws -> MigrationSource {
        MigrationSource(request: .init(domain: try Guest.domain(running: running), host: Guest.hostA, options: options))
    }

    func destination(versions: [MigrationProtocolVersion] = MigrationProtocolVersion.supported) -> MigrationDestination {
        MigrationDestination(configuration: .init(host: Guest.hostB, versions: versions))
    }

    func sentMessage(_ actions: [MigrationSource.Action]) -> MigrationMessage? {
        for case .send(let message) in actions { return message }
        return nil
    }

    func sentMessage(_ actions: [MigrationDestination.Action]) -> MigrationMessage? {
        for case .send(let message) in actions { return message }
        return nil
    }

    /// A destination that negotiated `version` and received a Prepare with `cookie`.
    func prepared(cookie: String, version: MigrationProtocolVersion = .v2, options: MigrationOptions = MigrationOptions()) throws -> (MigrationDestination, [MigrationDestination.Action]) {
        var destination = destination()
        _ = destination.handle(.received(.init(version, .begin(.init(versions: [version], domain: Self.identity, host: Guest.hostA)))))
        let actions = destination.handle(.received(.init(version, .prepare(.init(xml: Guest.xml, cookie: cookie, options: options)))))
        return (destination, actions)
    }

    @Test("the source's happy path: begin, prepare, migrate and perform, finish, then stop, mark and confirm")
    func sourceHappyPath() throws {
        var source = try source()
        #expect(source.awaiting == .nothing)
        let begin = source.handle(.start)
        #expect(begin == [.send(.init(.v2, .begin(.init(versions: [.v2, .v1], domain: Self.identity, host: Guest.hostA))))])
        #expect(source.awaiting == .message("begin-reply"))
        let prepare = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2, .v1], host: Guest.hostB)))))
        guard case .prepare(let body) = sentMessage(prepare)?.body else {
            Issue.record("no prepare: \(prepare)")
            return
        }
        #expect(body.xml == Guest.xml)
        #expect(body.cookie == (try Fixtures.cookie("keel-begin-v2")))
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: Guest.hostB.name, hostUUID: Guest.hostB.uuid).formatted()
        let migrate = source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:192.0.2.2:49152")))))
        #expect(migrate == [.startMigration(uri: "tcp:192.0.2.2:49152", .init()), .send(.init(.v2, .perform))])
        #expect(source.awaiting == .stream)
        var statistics = MigrationStatistics()
        statistics.downtime = 21
        let finish = source.handle(.streamCompleted(statistics))
        guard case .finish(let finishBody) = sentMessage(finish)?.body else {
            Issue.record("no finish: \(finish)")
            return
        }
        #expect(finishBody.resume)
        #expect(try MigrationCookie(xmlString: finishBody.cookie).statistics?.downtime == 21)
        #expect(source.guest == .pausedHereOutcomeUnknown)
        let done = source.handle(.received(.init(.v2, .finishReply(.init(cookie: cookie, running: true)))))
        #expect(done == [.stopQEMU, .markMigrated(undefine: false), .send(.init(.v2, .confirm))])
        #expect(source.outcome == .migrated(runningOnDestination: true))
        #expect(source.guest == .destination)
    }

    @Test("an offline migration pauses first and resumes on failure")
    func offline() throws {
        var source = try source(MigrationOptions(live: false))
        _ = source.handle(.start)
        _ = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2], host: Guest.hostB)))))
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "b", hostUUID: Guest.hostB.uuid).formatted()
        #expect(source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:b:1"))))) == [.pauseGuest])
        let failed = source.handle(.operationFailed(MigrationError(.operationFailed, "pause failed")))
        #expect(failed == [.resumeGuest, .send(.init(.v2, .abort(MigrationError(.operationFailed, "pause failed"))))])
    }

    @Test("a guest the user paused is never resumed by a failing migration")
    func userPaused() throws {
        var source = try source(running: false)
        _ = source.handle(.start)
        _ = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2], host: Guest.hostB)))))
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "b", hostUUID: Guest.hostB.uuid).formatted()
        _ = source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:b:1")))))
        let failed = source.handle(.peerLost)
        #expect(failed == [.cancelMigration])
        #expect(source.guest == .pausedHere)
    }

    @Test("the source refuses a version it did not offer and its own host")
    func sourceChecksTheReply() throws {
        var source = try source()
        _ = source.handle(.start)
        let actions = source.handle(.received(.init(MigrationProtocolVersion(rawValue: 3), .beginReply(.init(versions: [MigrationProtocolVersion(rawValue: 3)], host: Guest.hostB)))))
        #expect(source.phase == .failed)
        #expect(source.error?.code == .protocolViolation)
        #expect(actions.count == 1)

        var loop = try self.source()
        _ = loop.handle(.start)
        _ = loop.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2], host: Guest.hostA)))))
        #expect(loop.error?.message == "Attempt to migrate guest to the same host \(Guest.hostA.uuid)")
    }

    @Test("the destination refuses an unknown mandatory cookie feature by name before deciding anything")
    func unknownFeatureAtPrepare() throws {
        let cookie = try Fixtures.cookie("keel-begin-v2").replacingOccurrences(of: "  <cpu mode=", with: "  <feature name='vtpm-state'/>\n  <cpu mode=")
        let (destination, actions) = try prepared(cookie: cookie)
        #expect(destination.phase == .failed)
        guard case .abort(let error) = sentMessage(actions)?.body else {
            Issue.record("no abort: \(actions)")
            return
        }
        #expect(error.message == "Unknown migration cookie feature vtpm-state")
        #expect(error.cookieFeature == "vtpm-state")
        #expect(actions.count == 1)
    }

    @Test("protocol 2 judges and pins the ABI record's CPU; protocol 1 ignores the cookie's CPU and starts the original")
    func incomingCPU() throws {
        let cookie = try Fixtures.cookie("keel-begin-v2")
        let (_, current) = try prepared(cookie: cookie, version: .v2)
        #expect(current == [.decideCPU(IncomingCPU(original: try Guest.definition.cpu, sideChannel: try Guest.updatedCPU, abiRecord: try Guest.abiRecord), try Guest.definition)])
        var (older, previous) = try prepared(cookie: cookie, version: .v1)
        guard case .decideCPU(let incoming, _) = previous.first else {
            Issue.record("no decision: \(previous)")
            return
        }
        #expect(incoming.pinned == nil)
        #expect(incoming.target == (try Guest.definition.cpu))
        previous = older.handle(.cpuDecided(CPUVerdict()))
        #expect(previous == [.startQEMU(try Guest.definition, .updateLive(try Guest.definition.cpu), tlsStream: false)])
    }

    @Test("the destination's refusal names every feature with its CPUID bits and starts nothing")
    func refusal() throws {
        var (destination, _) = try prepared(cookie: try Fixtures.cookie("keel-begin-v2"))
        let actions = destination.handle(.cpuDecided(Guest.refusal))
        #expect(actions.count == 1)
        guard case .abort(let error) = sentMessage(actions)?.body else {
            Issue.record("no abort: \(actions)")
            return
        }
        #expect(error.code == .incompatibleCPU)
        #expect(error.verdict == Guest.refusal)
        #expect(error.message == "this host cannot reproduce the guest CPU: missing avx2 (CPUID[eax=0x7,ecx=0x0].EBX bit 5): beyond this host's CPU ceiling; extra vmx (CPUID[eax=0x1,ecx=0x0].ECX bit 5): QEMU 7.2.22 turns it on under kvm and cannot turn it off")
        #expect(destination.qemuMayExist == false)
    }

    @Test("the destination's happy path, and what a source abort does before and after finish")
    func destinationPath() throws {
        var (destination, _) = try prepared(cookie: try Fixtures.cookie("keel-begin-v2"))
        var pinned = try Guest.updatedCPU
        pinned.check = .full
        #expect(destination.handle(.cpuDecided(CPUVerdict())) == [.startQEMU(try Guest.definition, .equal(pinned), tlsStream: false)])
        #expect(destination.presence == .incoming)
        #expect(destination.handle(.qemuStarted) == [.checkLiveCPU(.equal(pinned))])
        #expect(destination.handle(.liveCPUChecked) == [.acceptStream])
        guard case .prepareReply(let reply) = sentMessage(destination.handle(.listening(uri: "tcp:192.0.2.2:49152")))?.body else {
            Issue.record("no prepare-reply")
            return
        }
        #expect(reply.uri == "tcp:192.0.2.2:49152")
        var early = destination
        #expect(early.handle(.received(.init(.v2, .abort(MigrationError(.aborted, "stop"))))) == [.killQEMU, .discardDefinition])
        #expect(early.presence == .absent)

        #expect(destination.handle(.received(.init(.v2, .perform))) == [])
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "a", hostUUID: Guest.hostA.uuid).formatted()
        #expect(destination.handle(.received(.init(.v2, .finish(.init(cookie: cookie, resume: true))))) == [.awaitIncomingCompletion])
        // After finish the takeover goes on whatever the source says or whether it is there.
        #expect(destination.handle(.received(.init(.v2, .abort(MigrationError(.aborted, "stop"))))) == [])
        #expect(destination.handle(.peerLost) == [])
        #expect(destination.handle(.incomingCompleted) == [.commitDefinition(try Guest.definition, persistent: false)])
        var restarted = destination
        #expect(restarted.handle(.daemonRestarted) == [.commitDefinition(try Guest.definition, persistent: false)])
        #expect(destination.handle(.definitionCommitted) == [.resumeGuest])
        // The peer is gone: no reply is sent, the guest is this host's.
        #expect(destination.handle(.guestResumed) == [])
        #expect(destination.presence == .running)
        #expect(destination.handle(.received(.init(.v2, .query(Self.identity))))
                == [.send(.init(.v2, .queryReply(.running)))])
    }

    @Test("a failure after finish kills, discards and tells the source, which resumes")
    func failureAfterFinish() throws {
        var (destination, _) = try prepared(cookie: try Fixtures.cookie("keel-begin-v2"))
        for event in [MigrationDestination.Event.cpuDecided(CPUVerdict()), .qemuStarted, .liveCPUChecked, .listening(uri: "tcp:b:1")] {
            _ = destination.handle(event)
        }
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "a", hostUUID: Guest.hostA.uuid).formatted()
        _ = destination.handle(.received(.init(.v2, .finish(.init(cookie: cookie, resume: true)))))
        _ = destination.handle(.incomingCompleted)
        _ = destination.handle(.definitionCommitted)
        let failure = MigrationError(.operationFailed, "cont failed")
        #expect(destination.handle(.operationFailed(failure)) == [.killQEMU, .discardDefinition, .send(.init(.v2, .abort(failure)))])

        var source = try source()
        _ = source.handle(.start)
        _ = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2], host: Guest.hostB)))))
        _ = source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie.replacingOccurrences(of: Guest.hostA.uuid, with: Guest.hostB.uuid), uri: "tcp:b:1")))))
        _ = source.handle(.streamCompleted(nil))
        #expect(source.handle(.received(.init(.v2, .abort(failure)))) == [.resumeGuest])
        #expect(source.guest == .runningHere)
    }

    @Test("a restarted source keeld cancels and resumes before finish, and asks after it")
    func sourceRestart() throws {
        var source = try source()
        _ = source.handle(.start)
        _ = source.handle(.received(.init(.v2, .beginReply(.init(versions: [.v2], host: Guest.hostB)))))
        let cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "b", hostUUID: Guest.hostB.uuid).formatted()
        _ = source.handle(.received(.init(.v2, .prepareReply(.init(cookie: cookie, uri: "tcp:b:1")))))
        var early = source
        #expect(early.handle(.daemonRestarted) == [.cancelMigration, .resumeGuest])
        _ = source.handle(.streamCompleted(nil))
        #expect(source.handle(.daemonRestarted) == [.queryDestination])
        #expect(source.phase == .outcomeUnknown)
        #expect(source.handle(.received(.init(.v2, .queryReply(.incoming)))) == [.send(.init(.v2, .abort(MigrationError(.aborted, "the source keeps the guest")))), .queryDestination])
        #expect(source.handle(.received(.init(.v2, .queryReply(.absent)))) == [.resumeGuest])
        #expect(source.phase == .failed)
    }

    @Test("a message in the wrong version or phase is a protocol violation that aborts before finish")
    func violations() throws {
        var (destination, _) = try prepared(cookie: try Fixtures.cookie("keel-begin-v2"))
        let actions = destination.handle(.received(.init(.v1, .perform)))
        #expect(destination.phase == .failed)
        guard case .abort(let error) = sentMessage(actions)?.body else {
            Issue.record("no abort: \(actions)")
            return
        }
        #expect(error.code == .protocolViolation)
        #expect(error.message == "unexpected migration message 'perform' (protocol 1) while deciding")
    }
}
