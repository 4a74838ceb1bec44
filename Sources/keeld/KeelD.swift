import ArgumentParser
import KeelDaemon
import Logging

/// `keeld`: the Keel daemon, serving the driver's API on a Unix socket.
@main
struct KeelD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keeld",
        abstract: "Serve Keel's HTTP/JSON API on a Unix socket.",
        discussion: """
            Domains live in the state directory, shared with an embedded `keel`; guests keep \
            running when keeld stops and are found again when it starts. SIGTERM and SIGINT stop \
            keeld gracefully; SIGHUP reloads STATE/config.xml. The API is described at \
            GET /openapi.json.
            """
    )

    @Option(name: .customLong("state"), help: "The state directory.") var stateDirectory = "/var/lib/keel"
    @Option(name: .customLong("socket"), help: "The API's Unix socket.") var socketPath = "/run/keel/keeld.sock"
    @Option(help: "A group allowed to use the API besides root (socket mode 0660).") var group: String?
    @Option(help: "Seconds a modifying job waits for the job in progress on the same domain.") var jobTimeout: Double = 10
    @Option(help: "Events a slow GET /v1/events client may fall behind before the oldest are dropped.") var eventBuffer: Int = 1024
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel: String = "info"
    @Option(help: "Listen for peer keelds (migration): tls://ADDR:PORT, or tcp://ADDR:PORT with --insecure.") var listen: String?
    @Option(help: "The peer channel's TLS identity: a directory with ca.pem, cert.pem and key.pem.") var tlsDir: String?
    @Flag(help: "Accept a plaintext tcp:// peer listener.") var insecure = false
    @Option(help: .hidden) var migrationProtocol: Int?
    /// Test-only: hold migrations at ROLE:PHASE (e.g. `destination:prepared`) until the test
    /// removes STATE/run/NAME.hold.
    @Option(help: .hidden) var testHold: [String] = []

    func validate() throws {
        guard stateDirectory.hasPrefix("/"), socketPath.hasPrefix("/") else {
            throw ValidationError("--state and --socket must be absolute paths")
        }
        guard jobTimeout >= 0, jobTimeout <= 3600 else { throw ValidationError("--job-timeout must be between 0 and 3600 seconds") }
        guard eventBuffer >= 1, eventBuffer <= 1 << 20 else { throw ValidationError("--event-buffer must be between 1 and 1048576 events") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        for hold in testHold where !(hold.hasPrefix("source:") || hold.hasPrefix("destination:")) {
            throw ValidationError("--test-hold takes source:PHASE or destination:PHASE, not '\(hold)'")
        }
    }

    func run() async throws {
        // Before anything else reads the environment: socket activation's variables are removed.
        let activation = Result { try SocketActivation.inheritedSocket() }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "keeld")
        var configuration = DaemonConfiguration(
            stateDirectory: stateDirectory, socketPath: socketPath, group: group,
            jobTimeout: .milliseconds(Int64((jobTimeout * 1000).rounded())), eventBufferLimit: eventBuffer,
            listen: listen, tlsDirectory: tlsDir, insecure: insecure,
            migrationVersions: migrationProtocol.map { [$0] } ?? [2, 1], testHolds: testHold
        )
        do {
            configuration.activationSocket = try activation.get()
            try await Daemon(configuration: configuration, logger: logger).run()
        } catch {
            logger.critical("keeld cannot run", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
    }
}
