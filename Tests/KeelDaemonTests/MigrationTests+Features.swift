import Foundation
import KeelTestSupport
import Testing

/// QEMU's TLS for the stream, the events on both hosts, and the dry run's text.
extension MigrationTests {
    /// The port the incoming QEMU listened on, from the last such line of a keeld's log.
    static func streamPort(_ log: String) -> UInt16? {
        guard let line = log.split(separator: "\n").last(where: { $0.contains("the incoming QEMU listens") }),
              let range = line.range(of: #"uri=\"?tcp:[0-9.]+:([0-9]+)"#, options: .regularExpression)
        else { return nil }
        return UInt16(line[range].split(separator: ":").last.map { $0.filter(\.isNumber) } ?? "")
    }

    /// The private directories of the stream's credentials left in a keeld's state.
    static func credentialDirectories(_ keeld: Keeld) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: keeld.state + "/run")) ?? []).filter { $0.hasSuffix(".migration-tls") }
    }

    @Test("--tls-stream: QEMU's stream opens with a TLS handshake on the wire where a plain one opens with QEVM; the guest sees the same CPUID; no credentials are left")
    func tlsStream() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            let before = try await pair.startGuest("mig")

            // There in plaintext: the capture sees QEMU's magic, so it would see it over TLS too.
            var capture = try? PacketCapture()
            if capture == nil { print("SKIP: the wire check (no packet socket here); the migrations are still checked") }
            let plain = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI])
            #expect(plain.status == 200, "\(plain.text)")
            if let segments = capture?.stop() {
                let port = try #require(Self.streamPort(pair.destination.log()), "\(pair.destination.log())")
                let openings = PacketCapture.openings(segments, toPort: port)
                #expect(openings.first.map { Array($0.prefix(4)) } == PacketCapture.qemuMagic, "a plain stream opens with QEVM: \(openings)")
            }
            let offset = pair.serialSize("mig")
            #expect(try await pair.cpuidBlock("mig", after: offset) == before)

            // And back with --tls-stream, with keel through the destination's keeld.
            capture = try? PacketCapture()
            let back = try Subprocess.run(Self.keel, ["--connect", "unix:" + pair.destination.socket, "migrate", "mig",
                                                      "--to", "tls://127.0.0.1:\(pair.sourcePort)", "--tls-stream", "--json"], timeout: 120)
            #expect(back.status == 0, "\(back.output)\n\(pair.destination.log())\n\(pair.source.log())")
            #expect(back.stdout.contains(#""runningOnDestination": true"#), "\(back.stdout)")
            #expect(pair.source.log().contains("tls=true"), "the incoming QEMU listened for TLS")
            if let segments = capture?.stop() {
                let port = try #require(Self.streamPort(pair.source.log()), "\(pair.source.log())")
                let openings = PacketCapture.openings(segments, toPort: port)
                #expect(!openings.isEmpty, "the stream was captured")
                for opening in openings {
                    #expect(Array(opening.prefix(4)) != PacketCapture.qemuMagic, "no plaintext QEMU stream")
                    // A TLS record: handshake (22), version 3.x.
                    #expect(opening.count >= 2 && opening[0] == 0x16 && opening[1] == 0x03, "a TLS handshake opens the stream: \(opening)")
                }
            }
            let home = try pair.states("mig")
            #expect(home.source == "running")
            #expect(home.destination == "absent", "transient there, so gone once it left")
            let backOffset = pair.serialSize("mig")
            #expect(try await pair.cpuidBlock("mig", after: backOffset) == before, "the guest sees the same CPU after the TLS stream")
            #expect(Self.credentialDirectories(pair.source).isEmpty && Self.credentialDirectories(pair.destination).isEmpty)
        }
    }

    @Test("--tls-stream to a destination whose certificate does not name the address: QEMU's TLS refuses it, the guest runs on at the source, nothing is left there; without TLS the same move succeeds")
    func tlsStreamWrongName() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with(destinationName: "elsewhere") { pair in
            _ = try await pair.startGuest("mig")
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let refused = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "tlsStream": true])
            #expect(refused.status >= 400, "\(refused.text)")
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                (try? pair.states("mig")).map { $0.source == "running" && $0.destination == "absent" ? true : nil } ?? nil
            }
            #expect(isAlive(sourcePid))
            #expect(pair.pid(pair.destination, "mig") == nil, "no QEMU left on the destination")
            #expect(Self.credentialDirectories(pair.source).isEmpty && Self.credentialDirectories(pair.destination).isEmpty)
            let offset = pair.serialSize("mig")
            _ = try await pair.waitForTick("mig", beyond: pair.lastTick("mig") ?? 0, after: offset)

            // The peer channel does not check names: only QEMU's TLS refused.
            let plain = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI])
            #expect(plain.status == 200, "\(plain.text)")
        }
    }

    @Test("--tls-stream to a destination speaking only protocol 1 is refused before anything moves")
    func tlsStreamOlderPeer() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with(destinationArguments: ["--migration-protocol", "1"]) { pair in
            _ = try await pair.startGuest("mig")
            let refused = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "tlsStream": true])
            #expect(refused.status >= 400, "\(refused.text)")
            #expect(refused.errorMessage.contains("cannot carry the stream over TLS"), "\(refused.errorMessage)")
            let states = try pair.states("mig")
            #expect(states.source == "running")
            #expect(states.destination == "absent")
            #expect(!FileManager.default.fileExists(atPath: pair.destination.state + "/log/mig.log"), "no QEMU was started on the destination")
        }
    }

    /// The events' names in order, without `job-progress`.
    static func lifecycle(_ events: [[String: Any]]) -> [String] {
        events.compactMap { $0["event"] as? String }.filter { $0 != "job-progress" }
    }

    @Test("a migration shows on both hosts' event streams: migrating, progress, migrated, undefined there; incoming, defined, started here")
    func events() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            _ = try await pair.startGuest("mig")
            let source = try EventStream(socket: pair.source.socket, domain: "mig")
            let destination = try EventStream(socket: pair.destination.socket, domain: "mig")
            let migrated = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "persistent": true, "undefineSource": true])
            #expect(migrated.status == 200, "\(migrated.text)")

            let sent = source.collect { $0["event"] as? String == "undefined" }
            #expect(Self.lifecycle(sent) == ["migrating", "migrated", "undefined"], "\(sent)")
            #expect(sent.first?["detail"] as? String == pair.destinationURI)
            #expect(sent.first { $0["event"] as? String == "migrated" }?["detail"] as? String == pair.destinationURI)
            #expect(sent.last?["detail"] as? String == "migrated")
            let progress = sent.filter { $0["event"] as? String == "job-progress" }
            #expect(!progress.isEmpty, "progress while the stream runs")
            #expect(progress.allSatisfy { ($0["job"] as? [String: Any])?["operation"] as? String == "migration-out" })

            let received = destination.collect { $0["event"] as? String == "started" }
            #expect(Self.lifecycle(received) == ["incoming", "defined", "started"], "\(received)")
            #expect(received.first?["detail"] as? String == MigrationTests.hostName, "incoming names the source host")
            #expect(received.first { $0["event"] as? String == "defined" }?["detail"] as? String == "added")
            #expect(received.last?["detail"] as? String == "migrated")
            #expect(received.filter { $0["event"] as? String == "job-progress" }
                .allSatisfy { ($0["job"] as? [String: Any])?["operation"] as? String == "migration-in" })
            // Nothing else follows: the source's QEMU stopping is the migration's, not a crash.
            #expect(source.next(timeout: 2) == nil)
            #expect(destination.next(timeout: 1) == nil)
        }
    }

    /// This machine's host name, which both keelds report.
    static let hostName: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()
}
