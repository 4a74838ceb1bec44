import ArgumentParser
import KeelClient
import KeelDomain
import KeelQEMU

/// `keel migrate NAME DESTURI`: live-migrates a running domain to another keeld.
struct DomainMigrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate a running domain to another keeld host.",
        discussion: """
            DESTURI is the destination keeld's peer listener: tls://HOST:PORT (mutual TLS; this \
            keeld needs --tls-dir) or tcp://HOST:PORT (plaintext). The destination judges the \
            guest CPU before any QEMU starts and refuses naming each feature with its CPUID bits; \
            it pins the CPU completely and verifies it before it accepts the stream. The stream \
            goes directly between the two QEMUs over TCP; --tls-stream carries it over QEMU's TLS \
            with both keelds' --tls-dir identities (the destination's certificate must name the \
            host of DESTURI). --dry-run prints the destination's verdict and moves nothing. \
            Migration runs in keeld: the embedded driver cannot migrate. Progress: domjobinfo, \
            domjobabort, keel events on both hosts.
            """
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Argument(help: "The destination: tls://HOST:PORT or tcp://HOST:PORT (or --to).") var destinationArgument: String?
    @Option(name: .customLong("to"), help: "The destination: tls://HOST:PORT or tcp://HOST:PORT.") var to: String?
    @Flag(help: "Migrate the guest while it runs (the default; the opposite of --offline).") var live = false
    @Flag(name: .customLong("tls-stream"), help: "Carry the QEMU stream over QEMU's TLS too (both keelds need --tls-dir).") var tlsStream = false

    /// The destination, from the argument or `--to`.
    var destination: String { to ?? destinationArgument ?? "" }
    @Flag(help: "Make the domain persistent on the destination.") var persistent = false
    @Flag(name: [.customLong("undefinesource"), .customLong("undefine-source")], help: "Remove the definition here once migrated.") var undefineSource = false
    @Flag(help: "Pause the guest before the stream (offline migration) instead of migrating it live.") var offline = false
    @Flag(help: "Leave the guest paused on the destination.") var paused = false
    @Flag(name: .customLong("dry-run"), help: "Only ask the destination for its verdict on the guest CPU.") var dryRun = false
    @Option(name: .customLong("max-downtime"), help: "Maximum downtime in milliseconds.") var maxDowntime: UInt64?
    @Option(help: "Bandwidth cap in MiB/s (default: unlimited).") var bandwidth: UInt64?
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        try DomainStore.validate(name: name)
        switch (destinationArgument, to) {
        case (nil, nil): throw ValidationError("name the destination: keel migrate NAME --to tls://HOST:PORT")
        case (.some, .some): throw ValidationError("name the destination once: as an argument or with --to")
        default: break
        }
        if live && offline { throw ValidationError("--live and --offline contradict each other") }
        guard destination.hasPrefix("tls://") || destination.hasPrefix("tcp://") else {
            throw ValidationError("the destination must be tls://HOST:PORT or tcp://HOST:PORT")
        }
        if let bandwidth, bandwidth < 1 { throw ValidationError("--bandwidth must be at least 1 MiB/s") }
    }

    func run() async throws {
        guard case .daemon(let socket) = try options.connection() else {
            throw CommandFailure(message: "migration runs in keeld, and no keeld is in use: start keeld (with --tls-dir), or name its socket with --connect unix:PATH")
        }
        let backend = DaemonBackend(socketPath: socket, timeout: try Connection.requestTimeout())
        let request = Wire.MigrateRequest(
            destination: destination, live: !offline, paused: paused, persistent: persistent, undefineSource: undefineSource,
            dryRun: dryRun, tlsStream: tlsStream ? true : nil, maxDowntime: maxDowntime, bandwidth: bandwidth
        )
        let result: Wire.MigrateResult = try await driverCall {
            try await withProgress(backend: backend, domain: name, label: "Migration") {
                try await backend.call("POST", try backend.path(name, "migrate"), body: request, timeout: DaemonBackend.longJobTimeout)
            }
        }
        for warning in result.warnings {
            Output.warning(warning)
        }
        if json {
            var fields: [(String, JSON)] = [
                ("name", .string(name)), ("destination", .string(result.destination)), ("state", .string(result.state)),
                ("dryRun", .bool(result.dryRun)), ("warnings", .array(result.warnings.map { .string($0) })),
            ]
            if let version = result.protocol { fields.append(("protocol", .int(version))) }
            if let running = result.runningOnDestination { fields.append(("runningOnDestination", .bool(running))) }
            if let restorable = result.restorable { fields.append(("restorable", .bool(restorable))) }
            if let downtime = result.downtime { fields.append(("downtime", .int(Int(downtime)))) }
            if let measured = result.measuredDowntime { fields.append(("measuredDowntime", .int(Int(measured)))) }
            if let total = result.totalTime { fields.append(("totalTime", .int(Int(total)))) }
            if let setup = result.setupTime { fields.append(("setupTime", .int(Int(setup)))) }
            if dryRun {
                func list(_ features: [WireFeature]?) -> JSON {
                    .array((features ?? []).map { feature in .object([
                        ("name", .string(feature.name)), ("bits", .array(feature.bits.map { .string($0.description) })),
                        ("reason", .string(feature.reason ?? "")),
                    ]) })
                }
                fields += [("cpu", result.cpu.map(JSON.string) ?? .null), ("missing", list(result.missing)), ("extra", list(result.extra)),
                           ("reasons", .array((result.reasons ?? []).map(JSON.string)))]
            }
            Output.print(JSON.object(fields).text + "\n")
        } else if dryRun {
            Output.print(VerdictText.render(domain: name, can: "migrate to \(result.destination)", verdict: result.verdict, model: result.cpu))
        } else {
            Output.print("Domain '\(name)' migrated to \(result.destination)\(Self.timings(result))\n")
        }
        // A dry run that the destination refuses fails, as restore's does.
        if dryRun && result.restorable == false { throw ExitCode(1) }
    }
}

extension DomainMigrate {
    /// " (stream 812 ms, downtime 35 ms, QEMU's 12 ms)", or "" when QEMU reported nothing.
    static func timings(_ result: Wire.MigrateResult) -> String {
        guard let total = result.totalTime, total > 0 else { return "" }
        var parts = ["stream \(total) ms"]
        switch (result.measuredDowntime, result.downtime) {
        case (let measured?, let qemu?): parts.append("downtime \(measured) ms, QEMU's \(qemu) ms")
        case (let measured?, nil): parts.append("downtime \(measured) ms")
        case (nil, let qemu?): parts.append("QEMU's downtime \(qemu) ms")
        case (nil, nil): break
        }
        return " (" + parts.joined(separator: ", ") + ")"
    }
}

extension Wire {
    struct MigrateRequest: Codable, Sendable {
        var destination: String
        var live: Bool
        var paused: Bool
        var persistent: Bool
        var undefineSource: Bool
        var dryRun: Bool
        /// Sent only when asked for.
        var tlsStream: Bool?
        var maxDowntime: UInt64?
        var bandwidth: UInt64?
    }

    struct MigrateResult: Codable, Sendable {
        var name: String
        var destination: String
        var `protocol`: Int?
        var state: String
        var runningOnDestination: Bool?
        var dryRun: Bool
        var restorable: Bool?
        var warnings: [String]
        var downtime: UInt64?
        var measuredDowntime: UInt64?
        var totalTime: UInt64?
        var setupTime: UInt64?
        /// Dry run: the guest CPU's model and the destination's verdict.
        var cpu: String?
        var missing: [WireFeature]?
        var extra: [WireFeature]?
        var reasons: [String]?

        /// The destination's verdict (a dry run), with each feature's CPUID bits.
        var verdict: CPUVerdict {
            func problems(_ features: [WireFeature]?) -> [CPUVerdict.Problem] {
                (features ?? []).map { CPUVerdict.Problem(feature: DaemonBackend.problem($0), reason: $0.reason ?? "") }
            }
            return CPUVerdict(missing: problems(missing), extra: problems(extra), reasons: reasons ?? [])
        }
    }
}
