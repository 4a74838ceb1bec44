import Foundation
@testable import KeelDaemon
import KeelMigration
import KeelTestSupport
import Testing

/// Live migration between two real `keeld`s on loopback, each with its own state directory,
/// socket and peer listener (mutual TLS with certificates made by `scripts/keel-pki.sh`), moving
/// a tiny TCG test guest. What the guest sees is read from its serial output.
@Suite("keeld: live migration between two hosts", .serialized)
struct MigrationTests {
    /// Why the two-host tests cannot run here, or nil when they can.
    static let unavailableReason: String? = {
        if let reason = Keeld.guestUnavailableReason { return reason }
        return Subprocess.which("openssl") == nil ? "the openssl command is not installed (certificates are made with it)" : nil
    }()

    /// Two hosts with certificates from one CA, listening on free loopback ports.
    final class Pair {
        let pki: URL
        let source: Keeld
        let destination: Keeld
        let sourcePort: Int
        let destinationPort: Int

        /// The addresses the two hosts listen on (loopback, or each end of a veth pair).
        let sourceHost: String
        let destinationHost: String

        /// - Parameter destinationName: the destination's certificate names only this (no address).
        init(sourceArguments: [String] = [], destinationArguments: [String] = [], destinationCA: String? = nil, destinationConfig: String? = nil,
             network: Network? = nil, destinationName: String? = nil) throws {
            sourceHost = network?.sourceAddress ?? "127.0.0.1"
            destinationHost = network?.destinationAddress ?? "127.0.0.1"
            pki = FileManager.default.temporaryDirectory.appendingPathComponent("keel-pki-\(UUID().uuidString.prefix(8))")
            try Self.pki(pki.path, hosts: ["a", "b"])
            // Ports are free in their own namespaces when there are any; loopback's are probed.
            sourcePort = try freePort()
            destinationPort = try freePort()
            var destinationDirectory = pki.appendingPathComponent("b").path
            if let destinationCA {
                // Another fleet: its own CA and certificate.
                let other = pki.appendingPathComponent(destinationCA)
                try Self.pki(other.path, hosts: ["b"])
                destinationDirectory = other.appendingPathComponent("b").path
            }
            if let destinationName {
                let script = Keeld.repository.appendingPathComponent("scripts/keel-pki.sh").path
                let issued = try Subprocess.run("/bin/sh", [script, "host", pki.path, destinationName], timeout: 60)
                guard issued.status == 0 else { throw UnixHTTP.Failure(description: "keel-pki host: \(issued.output)") }
                destinationDirectory = pki.appendingPathComponent(destinationName).path
            }
            source = try Keeld(arguments: ["--tls-dir", pki.appendingPathComponent("a").path, "--listen", "tls://\(sourceHost):\(sourcePort)"] + sourceArguments)
            destination = try Keeld(arguments: ["--tls-dir", destinationDirectory, "--listen", "tls://\(destinationHost):\(destinationPort)"] + destinationArguments)
            if let network {
                source.launcher = ["/usr/sbin/ip", "netns", "exec", network.sourceNamespace]
                destination.launcher = ["/usr/sbin/ip", "netns", "exec", network.destinationNamespace]
            }
            // Two keelds on one machine are two hosts with their own UUIDs (else both would be
            // /etc/machine-id, and the destination would refuse its own host).
            for keeld in [source, destination] {
                try FileManager.default.createDirectory(atPath: keeld.state, withIntermediateDirectories: true)
                try (UUID().uuidString.lowercased() + "\n").write(toFile: keeld.state + "/host-uuid", atomically: true, encoding: .utf8)
            }
            if let destinationConfig {
                try FileManager.default.createDirectory(atPath: destination.state, withIntermediateDirectories: true)
                try destinationConfig.write(toFile: destination.state + "/config.xml", atomically: true, encoding: .utf8)
            }
            try source.start()
            try destination.start()
        }

        var destinationURI: String { "tls://\(destinationHost):\(destinationPort)" }

        static func pki(_ directory: String, hosts: [String]) throws {
            let script = Keeld.repository.appendingPathComponent("scripts/keel-pki.sh").path
            let made = try Subprocess.run("/bin/sh", [script, "init", directory], timeout: 60)
            guard made.status == 0 else { throw UnixHTTP.Failure(description: "keel-pki init: \(made.output)") }
            for host in hosts {
                let issued = try Subprocess.run("/bin/sh", [script, "host", directory, host, "127.0.0.1", "localhost", Network.sourceAddressText, Network.destinationAddressText], timeout: 60)
                guard issued.status == 0 else { throw UnixHTTP.Failure(description: "keel-pki host: \(issued.output)") }
            }
        }

        func tearDown() {
            source.tearDown()
            destination.tearDown()
            try? FileManager.default.removeItem(at: pki)
        }

        static func with(sourceArguments: [String] = [], destinationArguments: [String] = [], destinationCA: String? = nil,
                         destinationConfig: String? = nil, network: Network? = nil, destinationName: String? = nil,
                         _ body: (Pair) async throws -> Void) async throws {
            let pair = try Pair(sourceArguments: sourceArguments, destinationArguments: destinationArguments,
                                destinationCA: destinationCA, destinationConfig: destinationConfig, network: network,
                                destinationName: destinationName)
            defer { pair.tearDown() }
            try await body(pair)
        }

        /// Defines and starts `name` on the source; returns the CPUID block the guest printed.
        func startGuest(_ name: String, memoryMiB: Int = 32, cmdline: String = "") async throws -> [String] {
            let defined = try source.post("/v1/domains", ["xml": source.domainXML(name: name, memoryMiB: memoryMiB, cmdline: cmdline)])
            guard defined.status == 201 else { throw UnixHTTP.Failure(description: "define: \(defined.text)") }
            let started = try source.post("/v1/domains/\(name)/start")
            guard started.status == 200 else { throw UnixHTTP.Failure(description: "start: \(started.text)") }
            return try await cpuidBlock(name, after: 0)
        }

        /// The first complete CPUID block the guest printed after `offset` bytes of its serial file.
        func cpuidBlock(_ name: String, after offset: Int, timeout: TimeInterval = 60) async throws -> [String] {
            try await eventually(timeout: timeout, interval: .milliseconds(200)) { () -> [String]? in
                let lines = serial(name, after: offset)
                guard let start = lines.firstIndex(where: { $0.hasPrefix("CPUID 00000000") }), lines.count >= start + 5,
                      lines[start..<(start + 5)].allSatisfy({ $0.hasPrefix("CPUID ") }) else { return nil }
                return Array(lines[start..<(start + 5)])
            }
        }

        func serial(_ name: String, after offset: Int = 0) -> [String] {
            guard let data = FileManager.default.contents(atPath: source.serialPath(name)), data.count > offset else { return [] }
            return String(decoding: data[offset...], as: UTF8.self).split(separator: "\n").map(String.init)
        }

        func serialSize(_ name: String) -> Int {
            (try? FileManager.default.attributesOfItem(atPath: source.serialPath(name))[.size] as? Int) ?? 0
        }

        /// The highest TICK the guest printed after `offset`.
        func lastTick(_ name: String, after offset: Int = 0) -> Int? {
            serial(name, after: offset).compactMap { $0.hasPrefix("TICK ") ? Int($0.dropFirst(5)) : nil }.max()
        }

        /// Waits until the guest printed a TICK beyond `tick` after `offset` (it runs).
        func waitForTick(_ name: String, beyond tick: Int, after offset: Int, timeout: TimeInterval = 30) async throws -> Int {
            try await eventually(timeout: timeout, interval: .milliseconds(200)) { () -> Int? in
                lastTick(name, after: offset).flatMap { $0 > tick ? $0 : nil }
            }
        }

        /// The state each host reports for `name` (`absent` for a 404).
        func states(_ name: String) throws -> (source: String, destination: String) {
            func state(_ keeld: Keeld) throws -> String {
                let info = try keeld.get("/v1/domains/\(name)")
                return info.status == 404 ? "absent" : (info.json["state"] as? String ?? "?")
            }
            return (try state(source), try state(destination))
        }

        func pid(_ keeld: Keeld, _ name: String) -> Int32? {
            (try? String(contentsOfFile: keeld.state + "/run/\(name).pid", encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }

    @Test("a running TCG guest moves over mutual TLS: the same CPUID, its TICKs go on there, the source stopped, the definitions agree")
    func migrates() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            let before = try await pair.startGuest("mig")
            let uuid = try #require(pair.source.get("/v1/domains/mig").json["uuid"] as? String)
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let tick = try await pair.waitForTick("mig", beyond: 1, after: 0)

            let migrated = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "persistent": true, "undefineSource": true])
            #expect(migrated.status == 200, "\(migrated.text)\n\(pair.source.log())\n\(pair.destination.log())")
            #expect(migrated.json["runningOnDestination"] as? Bool == true)
            #expect(migrated.json["protocol"] as? Int == 2)
            #expect((migrated.json["warnings"] as? [Any])?.isEmpty == true)
            // QEMU's times, and the downtime the source measured: QEMU's own and the switch-over.
            let total = try #require(migrated.json["totalTime"] as? Int)
            let downtime = try #require(migrated.json["downtime"] as? Int)
            let measured = try #require(migrated.json["measuredDowntime"] as? Int)
            #expect(migrated.json["setupTime"] as? Int != nil)
            #expect(measured + 1 >= downtime && downtime <= total, "measured \(measured) ms, QEMU's \(downtime) of \(total) ms")
            let offset = pair.serialSize("mig")

            let states = try pair.states("mig")
            #expect(states.source == "absent", "undefined on the source")
            #expect(states.destination == "running")
            #expect(!isAlive(sourcePid), "the source QEMU is stopped")
            let info = try pair.destination.get("/v1/domains/mig")
            #expect(info.json["uuid"] as? String == uuid)
            #expect(info.json["persistent"] as? Bool == true)
            #expect(info.json["reason"] as? String == "migrated")
            let inactive = try pair.destination.get("/v1/domains/mig/xml?inactive=true")
            #expect((inactive.json["xml"] as? String)?.contains(uuid) == true, "the destination's definition is the guest's")

            // What the guest sees: the same CPUID words, time going on, no reboot.
            let after = try await pair.cpuidBlock("mig", after: offset)
            #expect(after == before)
            _ = try await pair.waitForTick("mig", beyond: tick, after: offset)
            #expect(!pair.serial("mig", after: offset).contains { $0.hasPrefix("KEEL-GUEST") }, "the guest did not boot again")
            #expect(pair.source.log().contains("job=migrate outcome=ok"))

            // And back again, with the keel CLI through the destination's keeld.
            let back = try Subprocess.run(Self.keel, ["--connect", "unix:" + pair.destination.socket, "migrate", "mig",
                                                      "tls://127.0.0.1:\(pair.sourcePort)", "--persistent", "--undefinesource", "--json"], timeout: 120)
            #expect(back.status == 0, "\(back.output)\n\(pair.destination.log())")
            #expect(back.stdout.contains(#""runningOnDestination": true"#), "\(back.stdout)")
            #expect(back.stdout.contains(#""measuredDowntime": "#) && back.stdout.contains(#""setupTime": "#), "\(back.stdout)")
            let backOffset = pair.serialSize("mig")
            let home = try pair.states("mig")
            #expect(home.source == "running")
            #expect(home.destination == "absent")
            #expect(try pair.source.get("/v1/domains/mig").json["uuid"] as? String == uuid)
            #expect(try await pair.cpuidBlock("mig", after: backOffset) == before, "there and back again, the guest sees the same CPU")
        }
    }

    /// The `keel` binary beside `keeld`.
    static let keel = URL(fileURLWithPath: Keeld.binary).deletingLastPathComponent().appendingPathComponent("keel").path

    @Test("a dry run asks the destination for its verdict and starts nothing; keel migrate refuses in embedded mode")
    func dryRunAndEmbedded() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            _ = try await pair.startGuest("mig")
            let verdict = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "dryRun": true])
            #expect(verdict.status == 200, "\(verdict.text)")
            #expect(verdict.json["restorable"] as? Bool == true)
            #expect(verdict.json["dryRun"] as? Bool == true)
            let states = try pair.states("mig")
            #expect(states.source == "running")
            #expect(states.destination == "absent")
            #expect(!FileManager.default.fileExists(atPath: pair.destination.state + "/log/mig.log"), "no QEMU was started on the destination")

            // keel prints the verdict: the guest can move, with its CPU model.
            let text = try Subprocess.run(Self.keel, ["--connect", "unix:" + pair.source.socket, "migrate", "mig", "--to", pair.destinationURI, "--dry-run"], timeout: 60)
            #expect(text.status == 0, "\(text.output)")
            #expect(text.stdout == "Domain 'mig' can migrate to \(pair.destinationURI) with its CPU unchanged\nCPU model: qemu64\n", "\(text.stdout)")
            #expect(try pair.states("mig").destination == "absent")

            let embedded = try Subprocess.run(Self.keel, ["--connect", "embed:" + pair.source.state, "migrate", "mig", pair.destinationURI], timeout: 60)
            #expect(embedded.status == 1)
            #expect(embedded.stderr.contains("migration runs in keeld"), "\(embedded.stderr)")
        }
    }

    @Test("domjobabort during the transfer cancels it in QEMU: the guest runs on in the source, the destination holds nothing")
    func abortDuringTransfer() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            _ = try await pair.startGuest("mig", memoryMiB: 256, cmdline: "fill=200")
            try pair.source.waitForSerial("mig", "FILLED", timeout: 120)
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/mig/migrate", ["destination": uri, "bandwidth": 16])
            }
            let job = try await eventually(timeout: 60, interval: .milliseconds(100)) { () -> [String: Any]? in
                let job = try pair.source.get("/v1/domains/mig/job").json["job"] as? [String: Any]
                return (job?["dataProcessed"] as? Int ?? 0) > 8 << 20 ? job : nil
            }
            #expect(job["operation"] as? String == "migration-out")
            let destinationPid = try #require(pair.pid(pair.destination, "mig"))
            let incoming = try pair.destination.get("/v1/domains/mig/job").json["job"] as? [String: Any]
            #expect(incoming?["operation"] as? String == "migration-in")
            let aborted = try pair.source.post("/v1/domains/mig/job/abort")
            #expect(aborted.status == 200, "\(aborted.text)")
            let answer = try await request.value
            #expect(answer.status >= 400)
            #expect(answer.errorCode == "aborted", "\(answer.text)")
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                (try? pair.states("mig")).map { $0.source == "running" && $0.destination == "absent" ? true : nil } ?? nil
            }
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in isAlive(destinationPid) ? nil : true }
            let offset = pair.serialSize("mig")
            _ = try await pair.waitForTick("mig", beyond: pair.lastTick("mig") ?? 0, after: offset)
        }
    }

    @Test("a destination whose CPU ceiling lacks cx16 refuses before any QEMU starts, naming the feature and its CPUID bit; the guest runs on")
    func ceilingRefuses() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with(destinationConfig: DaemonTests.ceilingConfiguration) { pair in
            _ = try await pair.startGuest("mig")
            let sourceEvents = try EventStream(socket: pair.source.socket, domain: "mig")
            let destinationEvents = try EventStream(socket: pair.destination.socket, domain: "mig")
            let refused = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI])
            #expect(refused.status == 422, "\(refused.text)")
            #expect(refused.errorCode == "incompatible-cpu")
            #expect(refused.errorMessage.contains("cx16"), "\(refused.errorMessage)")
            let features = (refused.json["error"] as? [String: Any])?["features"] as? [[String: Any]] ?? []
            #expect(features.compactMap { $0["name"] as? String } == ["cx16"])
            let bits = features.first?["bits"] as? [[String: Any]] ?? []
            #expect(bits.first?["leaf"] as? Int == 1)
            #expect(bits.first?["register"] as? String == "ecx")
            #expect(bits.first?["bit"] as? Int == 13)

            let states = try pair.states("mig")
            #expect(states.source == "running")
            #expect(states.destination == "absent")
            #expect(!FileManager.default.fileExists(atPath: pair.destination.state + "/log/mig.log"), "no QEMU was started on the destination")
            let offset = pair.serialSize("mig")
            _ = try await pair.waitForTick("mig", beyond: 0, after: offset)

            // The events: the source tried and failed, naming cx16; the destination saw nothing.
            let sent = sourceEvents.collect { $0["event"] as? String == "migration-failed" }
            #expect(Self.lifecycle(sent) == ["migrating", "migration-failed"], "\(sent)")
            #expect((sent.last?["detail"] as? String)?.contains("cx16") == true, "\(sent)")
            #expect(destinationEvents.next(timeout: 2) == nil, "nothing started on the destination")

            // The dry run's verdict: 200 with the refusal, and keel prints it with the bits and the model.
            let verdict = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "dryRun": true])
            #expect(verdict.status == 200, "\(verdict.text)")
            #expect(verdict.json["restorable"] as? Bool == false)
            #expect(verdict.json["cpu"] as? String == "qemu64")
            #expect((verdict.json["missing"] as? [[String: Any]])?.compactMap { $0["name"] as? String } == ["cx16"])
            let text = try Subprocess.run(Self.keel, ["--connect", "unix:" + pair.source.socket, "migrate", "mig", "--to", pair.destinationURI, "--dry-run"], timeout: 60)
            #expect(text.status == 1, "\(text.output)")
            #expect(text.stdout.hasPrefix("Domain 'mig' cannot migrate to \(pair.destinationURI): missing cx16 (CPUID[eax=0x1,ecx=0x0].ECX bit 13): "), "\(text.stdout)")
            #expect(text.stdout.hasSuffix("\nCPU model: qemu64\n"), "\(text.stdout)")
            #expect(sourceEvents.next(timeout: 1) == nil, "a dry run sends no events")
            #expect(try pair.states("mig").source == "running")
        }
    }

    @Test("a destination with a certificate from another CA is refused at the TLS handshake; the guest is untouched")
    func wrongCARefused() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with(destinationCA: "other") { pair in
            _ = try await pair.startGuest("mig")
            let refused = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI])
            #expect(refused.status >= 400, "\(refused.text)")
            #expect(refused.errorMessage.contains("TLS"), "\(refused.errorMessage)")
            let states = try pair.states("mig")
            #expect(states.source == "running")
            #expect(states.destination == "absent")
            let offset = pair.serialSize("mig")
            _ = try await pair.waitForTick("mig", beyond: 0, after: offset)
        }
    }

    @Test("a destination speaking only protocol 1: the source warns that the CPU cannot be verified, the guest moves with the original CPU")
    func olderPeer() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with(destinationArguments: ["--migration-protocol", "1"]) { pair in
            let before = try await pair.startGuest("mig")
            let migrated = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI])
            #expect(migrated.status == 200, "\(migrated.text)\n\(pair.destination.log())")
            #expect(migrated.json["protocol"] as? Int == 1)
            let warnings = (migrated.json["warnings"] as? [String]) ?? []
            #expect(warnings.contains { $0.contains("cannot be verified") }, "\(warnings)")
            #expect(pair.source.log().contains("cannot be verified"))
            let offset = pair.serialSize("mig")
            let states = try pair.states("mig")
            #expect(states.source == "shutoff", "still defined on the source (no --undefinesource), not running")
            #expect(states.destination == "running")
            #expect(try pair.destination.get("/v1/domains/mig").json["persistent"] as? Bool == false, "transient on the destination")
            // QEMU adds nothing to qemu64 under TCG that the original CPU lacks, so even the
            // unverified start gives the guest the same words.
            #expect(try await pair.cpuidBlock("mig", after: offset) == before)
        }
    }

    /// Faults during the transfer of a 256 MiB guest (filled with incompressible data) capped at
    /// 16 MiB/s, so that the stream lasts long enough to be interrupted.
    enum Fault: String, CaseIterable, Sendable {
        case destinationKeeld, destinationQEMU, sourceKeeld
        /// The guest is lost with its QEMU (as it would be without a migration): it reads
        /// `crashed` on the source, nothing runs anywhere.
        case sourceQEMU
    }

    @Test("a fault during the transfer leaves the guest on the source (running, or crashed with its QEMU), nothing on the destination, and the definitions agree",
          arguments: Fault.allCases)
    func faultDuringTransfer(_ fault: Fault) async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            _ = try await pair.startGuest("mig", memoryMiB: 256, cmdline: "fill=200")
            try pair.source.waitForSerial("mig", "FILLED", timeout: 120)
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/mig/migrate", ["destination": uri, "bandwidth": 16])
            }
            // The stream runs once the source's job reports bytes moving.
            _ = try await eventually(timeout: 60, interval: .milliseconds(100)) { () -> Bool? in
                let job = try pair.source.get("/v1/domains/mig/job").json["job"] as? [String: Any]
                return (job?["dataProcessed"] as? Int ?? 0) > 8 << 20 ? true : nil
            }
            let destinationPid = try #require(pair.pid(pair.destination, "mig"), "the destination QEMU runs")
            switch fault {
            case .destinationKeeld:
                pair.destination.stop(SIGKILL)
            case .destinationQEMU:
                kill(destinationPid, SIGKILL)
            case .sourceKeeld:
                pair.source.stop(SIGKILL)
            case .sourceQEMU:
                kill(sourcePid, SIGKILL)
            }
            let answer = try? await request.value
            if fault == .sourceQEMU {
                #expect(answer?.errorCode == "process-exited", "\(answer?.text ?? "no answer")")
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    (try? pair.states("mig")).map { $0 == ("crashed", "absent") ? true : nil } ?? nil
                }
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    isAlive(destinationPid) || !pair.destination.qemuProcesses().isEmpty ? nil : true
                }
                #expect(pair.source.qemuProcesses().isEmpty, "nothing runs anywhere")
                #expect(try pair.source.get("/v1/domains/mig").json["persistent"] as? Bool == true, "the source keeps its definition")
                return
            }
            if fault != .sourceKeeld {
                #expect(answer.map { $0.status >= 400 } == true, "\(answer?.text ?? "no answer")")
            }
            // The side that was killed comes back; recovery settles what it left.
            if fault == .sourceKeeld { try pair.source.start() }
            if fault == .destinationKeeld { try pair.destination.start() }
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                (try? pair.states("mig")).map { $0.source == "running" && $0.destination == "absent" ? true : nil } ?? nil
            }
            #expect(isAlive(sourcePid), "the guest's QEMU on the source is the one that ran before")
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                isAlive(destinationPid) ? nil : true
            }
            let offset = pair.serialSize("mig")
            let tick = pair.lastTick("mig") ?? 0
            _ = try await pair.waitForTick("mig", beyond: tick, after: offset)
            #expect(try pair.destination.get("/v1/domains/mig").status == 404, "no definition was left on the destination")
            #expect(try pair.source.get("/v1/domains/mig").json["persistent"] as? Bool == true)
        }
    }

    /// Faults at the switch-over: the stream completed (the guest is paused on the source) and
    /// `finish` was sent, but the destination's keeld is frozen (SIGSTOP), so no `finish-reply`
    /// comes.
    enum SwitchOverFault: String, CaseIterable, Sendable {
        /// The source keeld dies; the destination thaws and takes over; the restarted source asks.
        case sourceKeeldRestarts
        /// The destination keeld and its QEMU die; the source asks until the restarted
        /// destination answers `absent`, then resumes.
        case destinationLost
    }

    @Test("a fault between the completed stream and finish-reply: the source asks the destination, and exactly one guest runs", arguments: SwitchOverFault.allCases)
    func faultAtSwitchOver(_ fault: SwitchOverFault) async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            let before = try await pair.startGuest("mig", memoryMiB: 256, cmdline: "fill=200")
            try pair.source.waitForSerial("mig", "FILLED", timeout: 120)
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/mig/migrate", ["destination": uri, "bandwidth": 32])
            }
            _ = try await eventually(timeout: 60, interval: .milliseconds(100)) { () -> Bool? in
                let job = try pair.source.get("/v1/domains/mig/job").json["job"] as? [String: Any]
                return (job?["dataProcessed"] as? Int ?? 0) > 4 << 20 ? true : nil
            }
            let destinationPid = try #require(pair.pid(pair.destination, "mig"))
            pair.destination.signal(SIGSTOP)
            defer { pair.destination.signal(SIGCONT) }
            // The stream goes on between the QEMUs; the source then sends finish and waits.
            let record = pair.source.state + "/run/mig.migration.json"
            _ = try await eventually(timeout: 90, interval: .milliseconds(100)) { () -> Bool? in
                ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").contains(#""phase":"finishing""#) ? true : nil
            }
            #expect(try pair.source.get("/v1/domains/mig").json["state"] as? String != nil)
            switch fault {
            case .sourceKeeldRestarts:
                // The record says finishing before `finish` is written: kill the source only once
                // the frame waits in the frozen destination's receive queue.
                let port = pair.destinationPort
                _ = try await eventually(timeout: 30, interval: .milliseconds(100)) { () -> Bool? in
                    unreadBytes(onLocalPort: port) > 0 ? true : nil
                }
                pair.source.stop(SIGKILL)
                pair.destination.signal(SIGCONT)
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    try pair.destination.get("/v1/domains/mig").json["state"] as? String == "running" ? true : nil
                }
                try pair.source.start()
                #expect(pair.source.log().contains("the destination holds the guest"), "\(pair.source.log())")
                let states = try pair.states("mig")
                #expect(states.source == "shutoff", "still defined on the source, not running")
                #expect(states.destination == "running")
                #expect(!isAlive(sourcePid), "the source QEMU was stopped once the destination said it holds the guest")
                let offset = pair.serialSize("mig")
                #expect(try await pair.cpuidBlock("mig", after: offset) == before)
            case .destinationLost:
                kill(destinationPid, SIGKILL)
                pair.destination.stop(SIGKILL)
                try await Task.sleep(for: .seconds(2))
                #expect(try pair.source.get("/v1/domains/mig").json["state"] as? String == "paused", "never resumed blindly")
                try pair.destination.start()
                let answer = try await request.value
                #expect(answer.status >= 400, "\(answer.text)")
                let states = try pair.states("mig")
                #expect(states.source == "running")
                #expect(states.destination == "absent")
                #expect(isAlive(sourcePid))
                let offset = pair.serialSize("mig")
                _ = try await pair.waitForTick("mig", beyond: pair.lastTick("mig") ?? 0, after: offset)
            }
        }
    }

    @Test("a guest the user paused arrives paused, offline migration pauses first and still arrives running")
    func pausedAndOffline() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            let before = try await pair.startGuest("mig")
            #expect(try pair.source.post("/v1/domains/mig/suspend").json["state"] as? String == "paused")
            let migrated = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "persistent": true, "undefineSource": true])
            #expect(migrated.status == 200, "\(migrated.text)")
            #expect(migrated.json["runningOnDestination"] as? Bool == false)
            #expect(migrated.json["measuredDowntime"] == nil, "a guest that stays paused has no downtime to measure")
            #expect(try pair.states("mig") == ("absent", "paused"))
            #expect(try pair.destination.post("/v1/domains/mig/resume").json["state"] as? String == "running")
            let offset = pair.serialSize("mig")
            #expect(try await pair.cpuidBlock("mig", after: offset) == before)

            let back = try pair.destination.post("/v1/domains/mig/migrate", ["destination": "tls://127.0.0.1:\(pair.sourcePort)", "live": false,
                                                                             "persistent": true, "undefineSource": true])
            #expect(back.status == 200, "\(back.text)")
            #expect(back.json["runningOnDestination"] as? Bool == true)
            // Offline: the guest was paused before the stream began.
            let total = try #require(back.json["totalTime"] as? Int)
            #expect(try #require(back.json["measuredDowntime"] as? Int) + 1 >= total)
            #expect(try pair.states("mig") == ("running", "absent"))
        }
    }

    @Test("peer addresses: a scheme, a host and a port from 1 to 65535; anything else is refused at start")
    func peerAddresses() throws {
        #expect(throws: Never.self) { try checkPeer("tcp://127.0.0.1:16514") }
        #expect(throws: Never.self) { try checkPeer("tcp://localhost:16514/") }
        for bad in ["http://h:1", "tls://h", "tls://:1", "tls://h:0", "tls://h:65536", "tls://h:x", "h:1"] {
            let keeld = try Keeld(arguments: ["--listen", bad, "--insecure"])
            defer { keeld.tearDown() }
            #expect(throws: (any Error).self, "\(bad)") { try keeld.start() }
        }
    }

    /// Two network namespaces joined by a veth pair on a private /30, made and removed here.
    final class Network {
        static let sourceAddressText = "10.213.7.1"
        static let destinationAddressText = "10.213.7.2"
        let sourceNamespace: String
        let destinationNamespace: String
        let sourceLink = "keelt-va"
        let destinationLink = "keelt-vb"
        var sourceAddress: String { Self.sourceAddressText }
        var destinationAddress: String { Self.destinationAddressText }

        /// Why namespaces cannot be made here, or nil.
        static let unavailableReason: String? = {
            guard Subprocess.which("ip") != nil else { return "the ip command is not installed" }
            guard getuid() == 0 else { return "network namespaces need root" }
            return nil
        }()

        init() throws {
            let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
            sourceNamespace = "keelt-a-\(tag)"
            destinationNamespace = "keelt-b-\(tag)"
            Self.removeLinks()
            for command in [
                ["netns", "add", sourceNamespace], ["netns", "add", destinationNamespace],
                ["link", "add", sourceLink, "type", "veth", "peer", "name", destinationLink],
                ["link", "set", sourceLink, "netns", sourceNamespace], ["link", "set", destinationLink, "netns", destinationNamespace],
                ["-n", sourceNamespace, "addr", "add", Self.sourceAddressText + "/30", "dev", sourceLink],
                ["-n", destinationNamespace, "addr", "add", Self.destinationAddressText + "/30", "dev", destinationLink],
                ["-n", sourceNamespace, "link", "set", "lo", "up"], ["-n", destinationNamespace, "link", "set", "lo", "up"],
                ["-n", sourceNamespace, "link", "set", sourceLink, "up"], ["-n", destinationNamespace, "link", "set", destinationLink, "up"],
            ] {
                let result = try Subprocess.run("/usr/sbin/ip", command, timeout: 20)
                guard result.status == 0 else {
                    tearDown()
                    throw UnixHTTP.Failure(description: "ip \(command.joined(separator: " ")): \(result.output)")
                }
            }
        }

        /// Takes the source's end of the link down or up.
        func setLink(up: Bool) throws {
            _ = try Subprocess.run("/usr/sbin/ip", ["-n", sourceNamespace, "link", "set", sourceLink, up ? "up" : "down"], timeout: 20)
        }

        func tearDown() {
            _ = try? Subprocess.run("/usr/sbin/ip", ["netns", "del", sourceNamespace], timeout: 20)
            _ = try? Subprocess.run("/usr/sbin/ip", ["netns", "del", destinationNamespace], timeout: 20)
            Self.removeLinks()
        }

        private static func removeLinks() {
            _ = try? Subprocess.run("/usr/sbin/ip", ["link", "del", "keelt-va"], timeout: 20)
        }
    }

    @Test("two hosts in separate network namespaces: the guest moves over the veth link; the link cut during the stream leaves it on the source")
    func networkNamespaces() async throws {
        if let reason = Self.unavailableReason ?? Network.unavailableReason { print("SKIP: \(reason)"); return }
        let network = try Network()
        defer { network.tearDown() }
        try await Pair.with(network: network) { pair in
            let before = try await pair.startGuest("mig")
            let moved = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "persistent": true, "undefineSource": true])
            #expect(moved.status == 200, "\(moved.text)\n\(pair.destination.log())")
            #expect(try pair.states("mig") == ("absent", "running"))
            let offset = pair.serialSize("mig")
            #expect(try await pair.cpuidBlock("mig", after: offset) == before)
            #expect(try pair.destination.post("/v1/domains/mig/destroy").status == 200)
            #expect(try pair.destination.delete("/v1/domains/mig").status == 200)

            // A bigger guest, a capped stream, and the link cut while it runs.
            _ = try await pair.startGuest("big", memoryMiB: 256, cmdline: "fill=200")
            try pair.source.waitForSerial("big", "FILLED", timeout: 120)
            let sourcePid = try #require(pair.pid(pair.source, "big"))
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/big/migrate", ["destination": uri, "bandwidth": 16])
            }
            _ = try await eventually(timeout: 60, interval: .milliseconds(100)) { () -> Bool? in
                let job = try pair.source.get("/v1/domains/big/job").json["job"] as? [String: Any]
                return (job?["dataProcessed"] as? Int ?? 0) > 8 << 20 ? true : nil
            }
            let destinationPid = try #require(pair.pid(pair.destination, "big"))
            try network.setLink(up: false)
            let answer = try await request.value
            #expect(answer.status >= 400, "\(answer.text)")
            try network.setLink(up: true)
            _ = try await eventually(timeout: 60, interval: .milliseconds(200)) { () -> Bool? in
                (try? pair.states("big")).map { $0.source == "running" && $0.destination == "absent" ? true : nil } ?? nil
            }
            #expect(isAlive(sourcePid))
            _ = try await eventually(timeout: 60, interval: .milliseconds(200)) { () -> Bool? in isAlive(destinationPid) ? nil : true }
            let bigOffset = pair.serialSize("big")
            _ = try await pair.waitForTick("big", beyond: pair.lastTick("big") ?? 0, after: bigOffset)

            // The link down before Begin: the peer cannot be reached, nothing moves.
            try network.setLink(up: false)
            let unreachable = try pair.source.post("/v1/domains/big/migrate", ["destination": uri])
            try network.setLink(up: true)
            #expect(unreachable.status >= 400)
            #expect(unreachable.errorMessage.contains("cannot reach"), "\(unreachable.errorMessage)")
            #expect(try pair.states("big") == ("running", "absent"))
        }
    }

    @Test("the link cut after the stream completed, while finish-reply is on its way: the source waits paused, asks once the link is back, and stops its QEMU")
    func networkCutAtSwitchOver() async throws {
        if let reason = Self.unavailableReason ?? Network.unavailableReason { print("SKIP: \(reason)"); return }
        let network = try Network()
        defer { network.tearDown() }
        // The destination is held (test-only --test-hold) once the guest runs there and before its
        // finish-reply goes out: the link is cut exactly then, whatever the machine's load.
        try await Pair.with(destinationArguments: ["--test-hold", "destination:completed"], network: network) { pair in
            let before = try await pair.startGuest("mig", memoryMiB: 256, cmdline: "fill=200")
            try pair.source.waitForSerial("mig", "FILLED", timeout: 120)
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/mig/migrate", ["destination": uri, "bandwidth": 32, "persistent": true])
            }
            let record = pair.source.state + "/run/mig.migration.json"
            let hold = pair.destination.state + "/run/mig.hold"
            _ = try await eventually(timeout: 120, interval: .milliseconds(100)) { () -> Bool? in
                FileManager.default.fileExists(atPath: hold) ? true : nil
            }
            try network.setLink(up: false)
            try FileManager.default.removeItem(atPath: hold)
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                try pair.destination.get("/v1/domains/mig").json["state"] as? String == "running" ? true : nil
            }
            // The source cannot know: the guest stays paused there, never resumed blindly.
            _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").contains(#""phase":"outcomeUnknown""#) ? true : nil
            }
            #expect(try pair.source.get("/v1/domains/mig").json["state"] as? String == "paused")
            try network.setLink(up: true)
            let answer = try await request.value
            #expect(answer.status == 200, "\(answer.text)")
            #expect(answer.json["runningOnDestination"] as? Bool == true)
            let states = try pair.states("mig")
            #expect(states.source == "shutoff")
            #expect(states.destination == "running")
            #expect(!isAlive(sourcePid))
            #expect(try pair.destination.get("/v1/domains/mig").json["persistent"] as? Bool == true)
            let offset = pair.serialSize("mig")
            #expect(try await pair.cpuidBlock("mig", after: offset) == before)
        }
    }

    @Test("a completed stream's statistics get libvirt's timestamps: started when migrate was sent, stopped total-time − downtime later")
    func statisticsTimestamps() throws {
        var statistics = MigrationStatistics()
        statistics.timeElapsed = 500
        statistics.downtime = 120
        let issued = ContinuousClock.now - .milliseconds(600)
        let paused = try #require(MigrationService.stamp(&statistics, issued: issued))
        let wall = UInt64(Date().timeIntervalSince1970 * 1000)
        #expect(statistics.started + 600 <= wall + 5 && statistics.started + 600 + 50 >= wall, "started \(statistics.started), now \(wall)")
        #expect(statistics.stopped == statistics.started + 380)
        #expect(statistics.sent >= statistics.stopped)
        #expect(paused == issued + .milliseconds(380))
        // No downtime from QEMU: no pause to date.
        var unknown = MigrationStatistics()
        unknown.timeElapsed = 500
        #expect(MigrationService.stamp(&unknown, issued: issued) == nil)
        #expect(unknown.stopped == 0 && unknown.started > 0)
    }

    @Test("the peer listener refuses plaintext without --insecure")
    func plaintextNeedsInsecure() async throws {
        let keeld = try Keeld(arguments: ["--listen", "tcp://127.0.0.1:\(try freePort())"])
        defer { keeld.tearDown() }
        #expect(throws: (any Error).self) { try keeld.start() }
        #expect(keeld.log().contains("--insecure"))
    }
}

/// Bytes received and not yet read on the established TCP sockets whose local port is `port`
/// (the Recv-Q column of `ss`); 0 when `ss` cannot tell.
func unreadBytes(onLocalPort port: Int) -> Int {
    guard let listed = try? Subprocess.run("/usr/bin/ss", ["-tnH", "state", "established", "( sport = :\(port) )"], timeout: 10),
          listed.status == 0 else { return 0 }
    return listed.stdout.split(separator: "\n").compactMap { line in
        line.split(separator: " ", omittingEmptySubsequences: true).first.flatMap { Int($0) }
    }.reduce(0, +)
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw UnixHTTP.Failure(description: "socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard bound == 0 else { throw UnixHTTP.Failure(description: "bind: \(String(cString: strerror(errno)))") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Starts a keeld listening on `address` (a free port in place of 16514) and stops it; throws
/// when keeld refuses the address.
func checkPeer(_ address: String) throws {
    let port = try freePort()
    let keeld = try Keeld(arguments: ["--listen", address.replacingOccurrences(of: ":16514", with: ":\(port)"), "--insecure"])
    defer { keeld.tearDown() }
    try keeld.start()
}
