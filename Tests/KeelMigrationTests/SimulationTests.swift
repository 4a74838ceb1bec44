import KeelCPU
import KeelDomain
import KeelMigration
import Testing

/// The two machines driven against each other in memory, for each kind of peer and option, with
/// every fault injected before every step.
@Suite("source and destination against each other, with every failure at every step")
struct SimulationTests {
    struct Scenario: Sendable, CustomTestStringConvertible {
        var name: String
        var sourceVersions: [MigrationProtocolVersion] = MigrationProtocolVersion.supported
        var destinationVersions: [MigrationProtocolVersion] = MigrationProtocolVersion.supported
        var options = MigrationOptions()
        var running = true
        var undefineSource = false

        var testDescription: String { name }

        func simulation() throws -> Simulation {
            Simulation(
                request: MigrationSource.Request(
                    domain: try Guest.domain(running: running), host: Guest.hostA, options: options,
                    undefineSource: undefineSource, versions: sourceVersions
                ),
                destination: MigrationDestination.Configuration(host: Guest.hostB, versions: destinationVersions)
            )
        }
    }

    static let scenarios: [Scenario] = [
        Scenario(name: "protocol 2 both sides, live"),
        Scenario(name: "protocol 2, offline (paused for the transfer)", options: MigrationOptions(live: false)),
        Scenario(name: "protocol 2, a guest the user paused", running: false),
        Scenario(name: "protocol 2, --persistent --undefine-source --paused", options: MigrationOptions(paused: true, persistent: true), undefineSource: true),
        Scenario(name: "older destination (protocol 1 only)", destinationVersions: [.v1]),
        Scenario(name: "older source (protocol 1 only)", sourceVersions: [.v1]),
    ]

    @Test("without faults the guest moves: it runs on the destination only, definitions follow", arguments: scenarios)
    func success(scenario: Scenario) throws {
        var simulation = try scenario.simulation()
        simulation.run()
        #expect(simulation.endViolations(fault: nil) == [], "\(simulation.log.joined(separator: "\n"))")
        #expect(simulation.source.phase == .completed)
        #expect(simulation.destination.phase == .completed)
        #expect(simulation.destination.confirmed)
        #expect(simulation.sourceQEMU == .stopped)
        let expected: Simulation.DestinationQEMU = scenario.running && !scenario.options.paused ? .running : .paused
        #expect(simulation.destinationQEMU == expected)
        #expect(simulation.destinationDefinition == .committed(persistent: scenario.options.persistent))
        #expect(simulation.sourceDefinition == (scenario.undefineSource ? .undefined : .migrated))
        let version = MigrationProtocolVersion.negotiate(scenario.sourceVersions, scenario.destinationVersions)
        #expect(simulation.sent.allSatisfy { $0.version == version || $0.type == "begin" })
    }

    @Test("with protocol 2 the destination pins the cookie CPU; with an older peer it starts the original CPU and the source warns", arguments: scenarios)
    func guestCPU(scenario: Scenario) throws {
        var simulation = try scenario.simulation()
        simulation.run()
        let starts = simulation.destinationActions.compactMap { action -> MigrationDestination.CPUCheck? in
            if case .startQEMU(_, let check, _) = action { return check }
            return nil
        }
        let warnings = simulation.sourceActions.compactMap { action -> String? in
            if case .warn(let text) = action { return text }
            return nil
        }
        var pinned = try Guest.updatedCPU
        pinned.check = .full
        if scenario.sourceVersions.contains(.v2) && scenario.destinationVersions.contains(.v2) {
            #expect(starts == [.equal(pinned)])
            #expect(warnings.isEmpty)
        } else {
            #expect(starts == [.updateLive(try Guest.definition.cpu)])
            if scenario.sourceVersions.contains(.v2) {
                #expect(warnings.count == 1)
                #expect(warnings.first?.contains("the guest CPU cannot be verified there") == true)
            }
        }
    }

    @Test("every fault at every step: never running twice; running on exactly one host or paused on the source; definitions agree",
          arguments: scenarios)
    func faults(scenario: Scenario) throws {
        let length = Simulation.length(of: try scenario.simulation())
        var runs = 0
        var outcomes: [String: Int] = [:]
        for fault in Simulation.Fault.allCases {
            for step in 0...(length + 1) {
                for reconnect in [true, false] {
                    var simulation = try scenario.simulation()
                    simulation.run(fault: fault, at: step, reconnect: reconnect)
                    runs += 1
                    let problems = simulation.endViolations(fault: fault)
                    #expect(problems == [], "\(fault) before step \(step) (reconnect \(reconnect)):\n\(simulation.log.joined(separator: "\n"))")
                    outcomes["\(simulation.source.phase)/\(simulation.destination.phase)", default: 0] += 1
                }
            }
        }
        print("\(scenario.name): \(runs) runs over \(length) steps: \(outcomes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
        #expect(runs == Simulation.Fault.allCases.count * (length + 2) * 2)
        // Every kind of ending is reached somewhere in the matrix.
        #expect(outcomes["completed/completed", default: 0] > 0)
        #expect(outcomes["failed/failed", default: 0] > 0)
        #expect(outcomes["outcomeUnknown/completed", default: 0] + outcomes["outcomeUnknown/failed", default: 0] > 0)
    }

    @Test("the destination refuses a CPU beyond its ceiling before any QEMU starts, naming features and bits; the guest is untouched")
    func destinationRefuses() throws {
        var simulation = try SimulationTests.scenarios[0].simulation()
        simulation.verdict = { _ in Guest.refusal }
        simulation.run()
        #expect(simulation.endViolations(fault: nil) == [])
        #expect(simulation.source.phase == .failed)
        #expect(simulation.source.error?.code == .incompatibleCPU)
        #expect(simulation.source.error?.features.map(\.name) == ["avx2", "vmx"])
        #expect(simulation.source.error?.message.contains("missing avx2 (CPUID[eax=0x7,ecx=0x0].EBX bit 5): beyond this host's CPU ceiling") == true)
        #expect(!simulation.destinationActions.contains { if case .startQEMU = $0 { return true } else { return false } })
        #expect(simulation.sourceActions.allSatisfy { if case .send = $0 { return true } else { return false } })
        #expect(simulation.sourceQEMU == .running)
    }

    @Test("a dry run asks the destination for its verdict and changes nothing")
    func dryRun() throws {
        var simulation = try Scenario(name: "dry run", options: MigrationOptions(dryRun: true)).simulation()
        simulation.run()
        #expect(simulation.endViolations(fault: nil) == [])
        #expect(simulation.source.outcome == .accepted(CPUVerdict()))
        #expect(simulation.destination.presence == .absent)
        #expect(simulation.destinationQEMU == .none)
        #expect(simulation.sourceQEMU == .running)

        var refused = try Scenario(name: "dry run", options: MigrationOptions(dryRun: true)).simulation()
        refused.verdict = { _ in Guest.refusal }
        refused.run()
        #expect(refused.source.error?.verdict == Guest.refusal)
    }

    @Test("no protocol in common is a clear refusal before anything happens")
    func noCommonVersion() throws {
        var simulation = try Scenario(name: "future destination", destinationVersions: [MigrationProtocolVersion(rawValue: 3)]).simulation()
        simulation.run()
        #expect(simulation.endViolations(fault: nil) == [])
        #expect(simulation.source.error?.code == .unsupportedProtocol)
        #expect(simulation.source.error?.message == "no common migration protocol: this host speaks 3, the source offers 2, 1")
        #expect(simulation.sourceQEMU == .running)
    }

    @Test("peer lost after the stream completed and before Finish's answer: the guest stays paused on the source until the destination speaks")
    func ambiguous() throws {
        // Deliver until the destination has taken the guest over but before its answer arrives.
        var simulation = try SimulationTests.scenarios[0].simulation()
        simulation.perform(simulation.source.handle(.start))
        while !simulation.pending.isEmpty && simulation.destination.phase != .completed {
            simulation.deliver(simulation.pending.removeFirst())
        }
        #expect(simulation.source.phase == .finishing)
        simulation.reachable = false
        simulation.breakChannel(notify: [.source, .destination])
        while !simulation.pending.isEmpty { simulation.deliver(simulation.pending.removeFirst()) }
        #expect(simulation.source.phase == .outcomeUnknown)
        #expect(simulation.source.guest == .pausedHereOutcomeUnknown)
        #expect(simulation.sourceQEMU == .paused)
        #expect(simulation.destinationQEMU == .running)
        // Timeouts and restarts only ask again.
        for event in [MigrationSource.Event.timedOut, .peerLost, .daemonRestarted, .abortRequested] {
            let actions = simulation.source.handle(event)
            #expect(!actions.contains(.resumeGuest))
        }
        // The destination's word settles it.
        simulation.reachable = true
        simulation.perform(simulation.source.handle(.timedOut))
        while !simulation.pending.isEmpty { simulation.deliver(simulation.pending.removeFirst()) }
        #expect(simulation.source.phase == .completed)
        #expect(simulation.sourceQEMU == .stopped)
        #expect(simulation.endViolations(fault: nil) == [])
    }
}
