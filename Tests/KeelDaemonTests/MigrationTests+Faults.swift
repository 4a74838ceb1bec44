import Foundation
import KeelTestSupport
import Testing

/// Faults at each phase of the protocol, injected at an exact point: the `keeld` of one side is
/// started with the hidden, test-only `--test-hold ROLE:PHASE`, so that its machine stops right
/// after it entered (and persisted) that phase, before its actions, and writes
/// `STATE/run/NAME.hold`. The test kills a process or cuts the link there, then removes the file.
extension MigrationTests {
    /// One fault at one held point, and where the guest must end.
    struct PhaseFault: Sendable, CustomTestStringConvertible {
        enum Fault: String, Sendable {
            case sourceKeeld, sourceQEMU, destinationKeeld, destinationQEMU
            /// The veth link between the two network namespaces taken down.
            case link
        }

        enum Outcome: String, Sendable {
            /// Running on the source, untouched; nothing (no QEMU, no definition) on the destination.
            case onSource
            /// Running on the destination (persistent); no QEMU and no definition on the source.
            case onDestination
            /// Lost with the source's QEMU, killed before the stream: `crashed` on the source, its
            /// definition kept; nothing (no QEMU, no definition) on the destination.
            case crashedOnSource
            /// The destination owned the guest (it answered `finish`) when its QEMU died: `crashed`
            /// there, its definition kept; no QEMU and no definition on the source.
            case crashedOnDestination
        }

        /// The protocol's step, as the docs name it.
        var step: String
        /// `ROLE:PHASE` of the machine that is held.
        var hold: String
        var fault: Fault
        var outcome: Outcome

        var heldSide: String { String(hold.prefix { $0 != ":" }) }
        var testDescription: String { "\(step): \(fault.rawValue) at \(hold) → \(outcome.rawValue)" }
    }

    static let phaseFaults: [PhaseFault] = [
        // Begin: the channel is open, `begin` not yet sent.
        PhaseFault(step: "Begin", hold: "source:negotiating", fault: .sourceKeeld, outcome: .onSource),
        // Begin answered, Prepare not yet sent.
        PhaseFault(step: "Begin", hold: "source:preparing", fault: .sourceQEMU, outcome: .crashedOnSource),
        PhaseFault(step: "Begin", hold: "source:preparing", fault: .sourceKeeld, outcome: .onSource),
        PhaseFault(step: "Begin", hold: "source:preparing", fault: .destinationKeeld, outcome: .onSource),
        PhaseFault(step: "Begin", hold: "source:preparing", fault: .link, outcome: .onSource),
        // Prepare: the incoming QEMU started, its CPU not yet checked.
        PhaseFault(step: "Prepare", hold: "destination:checkingCPU", fault: .destinationQEMU, outcome: .onSource),
        // Prepare: the incoming QEMU listens, prepare-reply not yet sent.
        PhaseFault(step: "Prepare", hold: "destination:prepared", fault: .destinationKeeld, outcome: .onSource),
        PhaseFault(step: "Prepare", hold: "destination:prepared", fault: .link, outcome: .onSource),
        PhaseFault(step: "Prepare", hold: "destination:prepared", fault: .sourceKeeld, outcome: .onSource),
        // Finish: the stream completed (the guest is paused on the source), `finish` not yet sent.
        PhaseFault(step: "Finish", hold: "source:finishing", fault: .sourceQEMU, outcome: .onDestination),
        // Finish: `finish` received, the destination not yet waiting for the whole stream.
        PhaseFault(step: "Finish", hold: "destination:finishing", fault: .sourceQEMU, outcome: .onDestination),
        // Finish: the destination committed the definition, the guest not yet resumed.
        PhaseFault(step: "Finish", hold: "destination:resuming", fault: .destinationKeeld, outcome: .onDestination),
        // The `cont` fails: the destination kills its QEMU, drops the definition, says `abort`.
        PhaseFault(step: "Finish", hold: "destination:resuming", fault: .destinationQEMU, outcome: .onSource),
        // Finish: the guest runs on the destination, finish-reply not yet sent.
        PhaseFault(step: "Finish", hold: "destination:completed", fault: .destinationKeeld, outcome: .onDestination),
        PhaseFault(step: "Finish", hold: "destination:completed", fault: .destinationQEMU, outcome: .crashedOnDestination),
        // Confirm: the source has finish-reply, its QEMU not yet stopped nor its definition removed.
        PhaseFault(step: "Confirm", hold: "source:completed", fault: .sourceKeeld, outcome: .onDestination),
    ]

    @Test("a fault at a given phase leaves the guest running on exactly one host, and the definitions agree with where it runs",
          arguments: phaseFaults)
    func faultAtPhase(_ fault: PhaseFault) async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        var network: Network?
        if fault.fault == .link {
            if let reason = Network.unavailableReason { print("SKIP: \(reason)"); return }
            network = try Network()
        }
        defer { network?.tearDown() }
        let hold = ["--test-hold", fault.hold]
        let heldSource = fault.heldSide == "source"
        try await Pair.with(sourceArguments: heldSource ? hold : [], destinationArguments: heldSource ? [] : hold, network: network) { pair in
            let before = try await pair.startGuest("mig")
            let sourcePid = try #require(pair.pid(pair.source, "mig"))
            let socket = pair.source.socket
            let uri = pair.destinationURI
            let request = Task {
                try await Keeld.background(socket: socket, "POST", "/v1/domains/mig/migrate",
                                           ["destination": uri, "persistent": true, "undefineSource": true])
            }
            let held = heldSource ? pair.source : pair.destination
            let holdFile = held.state + "/run/mig.hold"
            _ = try await eventually(timeout: 60, interval: .milliseconds(20)) { () -> Bool? in
                FileManager.default.fileExists(atPath: holdFile) ? true : nil
            }
            switch fault.fault {
            case .sourceKeeld:
                pair.source.stop(SIGKILL)
            case .sourceQEMU:
                kill(sourcePid, SIGKILL)
            case .destinationKeeld:
                pair.destination.stop(SIGKILL)
            case .destinationQEMU:
                kill(try #require(pair.pid(pair.destination, "mig"), "the incoming QEMU runs"), SIGKILL)
            case .link:
                try network?.setLink(up: false)
            }
            try? FileManager.default.removeItem(atPath: holdFile)
            // The killed keeld comes back; its recovery settles what it left.
            if fault.fault == .sourceKeeld { try pair.source.start() }
            if fault.fault == .destinationKeeld { try pair.destination.start() }
            let answer = fault.fault == .sourceKeeld ? nil : try await request.value
            let logs = "\n--- source\n\(pair.source.log())\n--- destination\n\(pair.destination.log())"

            switch fault.outcome {
            case .onSource:
                if let answer { #expect(answer.status >= 400, "\(answer.text)") }
                // Also while the link is still down: each side notices on its own.
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    (try? pair.states("mig")).map { $0 == ("running", "absent") ? true : nil } ?? nil
                }
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    pair.destination.qemuProcesses().isEmpty ? true : nil
                }
                try network?.setLink(up: true)
                #expect(isAlive(sourcePid), "the guest's QEMU on the source is the one that ran before")
                #expect(pair.source.qemuProcesses() == [sourcePid])
                #expect(try pair.source.get("/v1/domains/mig").json["persistent"] as? Bool == true)
                #expect(try pair.destination.get("/v1/domains/mig").status == 404, "no definition was left on the destination\(logs)")
                let offset = pair.serialSize("mig")
                _ = try await pair.waitForTick("mig", beyond: pair.lastTick("mig") ?? 0, after: offset)
            case .onDestination:
                if let answer {
                    #expect(answer.status == 200, "\(answer.text)\(logs)")
                    #expect(answer.json["runningOnDestination"] != nil)
                }
                _ = try await eventually(timeout: 60, interval: .milliseconds(200)) { () -> Bool? in
                    (try? pair.states("mig")).map { $0 == ("absent", "running") ? true : nil } ?? nil
                }
                #expect(!isAlive(sourcePid), "the source QEMU is stopped")
                #expect(pair.source.qemuProcesses().isEmpty)
                #expect(pair.destination.qemuProcesses().count == 1)
                #expect(try pair.destination.get("/v1/domains/mig").json["persistent"] as? Bool == true)
                let offset = pair.serialSize("mig")
                #expect(try await pair.cpuidBlock("mig", after: offset) == before, "the guest runs on with the same CPU")
            case .crashedOnSource:
                #expect(answer?.errorCode == "process-exited", "\(answer?.text ?? "no answer")\(logs)")
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    (try? pair.states("mig")).map { $0 == ("crashed", "absent") ? true : nil } ?? nil
                }
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    pair.destination.qemuProcesses().isEmpty ? true : nil
                }
                #expect(pair.source.qemuProcesses().isEmpty, "nothing runs anywhere")
                #expect(try pair.source.get("/v1/domains/mig").json["persistent"] as? Bool == true, "the source keeps its definition")
                #expect(try pair.destination.get("/v1/domains/mig").status == 404, "no definition was left on the destination\(logs)")
            case .crashedOnDestination:
                #expect(answer?.status == 200, "\(answer?.text ?? "no answer")\(logs)")
                _ = try await eventually(timeout: 30, interval: .milliseconds(200)) { () -> Bool? in
                    (try? pair.states("mig")).map { $0 == ("absent", "crashed") ? true : nil } ?? nil
                }
                #expect(!isAlive(sourcePid), "the source QEMU is stopped")
                #expect(pair.source.qemuProcesses().isEmpty && pair.destination.qemuProcesses().isEmpty, "nothing runs anywhere")
                #expect(try pair.source.get("/v1/domains/mig").status == 404, "the source's definition was removed (--undefinesource)")
                #expect(try pair.destination.get("/v1/domains/mig").json["persistent"] as? Bool == true, "the destination keeps its definition")
            }
        }
    }

    @Test("across migration after save and restore: the guest sees the same CPUID words at every step, and the destination pins the restored guest's CPU")
    func migratesAfterSaveAndRestore() async throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        try await Pair.with { pair in
            let before = try await pair.startGuest("mig")
            let image = pair.source.directory.appendingPathComponent("mig.img").path
            let saved = try pair.source.post("/v1/domains/mig/save", ["file": image])
            #expect(saved.status == 200, "\(saved.text)")
            #expect(saved.json["state"] as? String == "shutoff")

            var offset = pair.serialSize("mig")
            let restored = try pair.source.post("/v1/restore", ["file": image])
            #expect(restored.status == 200, "\(restored.text)")
            #expect(try pair.source.get("/v1/domains/mig").json["reason"] as? String == "restored")
            #expect(try await pair.cpuidBlock("mig", after: offset) == before, "restored, the guest sees the same CPU")
            let restoredCPU = try Self.cpuElement(pair.source.get("/v1/domains/mig/xml").json["xml"] as? String)

            let migrated = try pair.source.post("/v1/domains/mig/migrate", ["destination": pair.destinationURI, "persistent": true, "undefineSource": true])
            #expect(migrated.status == 200, "\(migrated.text)\n\(pair.destination.log())")
            #expect((migrated.json["warnings"] as? [Any])?.isEmpty == true)
            offset = pair.serialSize("mig")
            #expect(try pair.states("mig") == ("absent", "running"))
            #expect(try await pair.cpuidBlock("mig", after: offset) == before, "migrated after the restore, the guest sees the same CPU")
            // The destination started and verified the CPU the restored guest has (from the cookie).
            let destinationCPU = try Self.cpuElement(pair.destination.get("/v1/domains/mig/xml").json["xml"] as? String)
            #expect(destinationCPU == restoredCPU)
            #expect(destinationCPU.contains("check='full'") || destinationCPU.contains("check=\"full\""), "\(destinationCPU)")
        }
    }

    /// The `<cpu>` element of a domain XML document.
    static func cpuElement(_ xml: String?) throws -> String {
        let xml = try #require(xml)
        let start = try #require(xml.range(of: "<cpu"))
        let end = try #require(xml.range(of: "</cpu>", range: start.upperBound..<xml.endIndex))
        return String(xml[start.lowerBound..<end.upperBound])
    }
}
