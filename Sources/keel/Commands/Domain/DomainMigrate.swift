import ArgumentParser
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
            it pins the CPU completely and verifies it before it accepts the stream. Migration \
            runs in keeld: the embedded driver cannot migrate. Progress: domjobinfo, domjobabort.
            """
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Argument(help: "The destination: tls://HOST:PORT or tcp://HOST:PORT (or --to).") var destinationArgument: String?
    @Option(name: .customLong("to"), help: "The destination: tls://HOST:PORT or tcp://HOST:PORT.") var to: String?
    @Flag(help: "Migrate the guest while it runs (the default; the opposite of --offline).") var live = false
    @Flag(name: .customLong("tls-stream"), help: "Carry the QEMU stream over TLS too (not supported yet).") var tlsStream = false

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
        if tlsStream {
            throw ValidationError("--tls-stream is not supported yet: the peer channel is TLS, but the stream between the two QEMUs is plain TCP")
        }
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
            dryRun: dryRun, maxDowntime: maxDowntime, bandwidth: bandwidth
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
            if let total = result.totalTime { fields.append(("totalTime", .int(Int(total)))) }
            Output.print(JSON.object(fields).text + "\n")
        } else if dryRun {
            Output.print("Domain '\(name)' can migrate to \(result.destination): its CPU can be reproduced there\n")
        } else {
            Output.print("Domain '\(name)' migrated to \(result.destination)\n")
        }
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
        var totalTime: UInt64?
    }
}
