import Glibc
import KeelMigration
import KeelQEMU
import Logging
import NIOCore
import ServiceLifecycle

/// `keeld`'s settings.
public struct DaemonConfiguration: Sendable {
    /// The state directory shared with embedded `keel`: definitions, status files, sockets.
    public var stateDirectory: String
    /// The API's Unix socket.
    public var socketPath: String
    /// A group allowed to use the API besides root (socket mode 0660 instead of 0600).
    public var group: String?
    /// How long a modifying job waits for the job in progress on the same domain.
    public var jobTimeout: Duration
    /// How many events a `GET /v1/events` subscriber may fall behind before the oldest are dropped.
    public var eventBufferLimit: Int
    /// Where to listen for peer `keeld`s (`tls://ADDR:PORT`, or `tcp://ADDR:PORT` when insecure).
    public var listen: String?
    /// The directory holding `ca.pem`, `cert.pem` and `key.pem` for the peer channel.
    public var tlsDirectory: String?
    /// Allows a plaintext `tcp://` listener.
    public var insecure: Bool
    /// The migration protocol versions spoken (a test narrows them to the previous one).
    public var migrationVersions: [Int]
    /// Test-only (`keeld --test-hold ROLE:PHASE`, hidden): migration phases at which this keeld
    /// stops and waits, so that a test can inject a fault at exactly that point (see
    /// `MigrationService.hold`). Empty, as it always is in production, it does nothing.
    public var testHolds: [String]
    /// The listening socket passed by systemd (`SocketActivation.inheritedSocket()`), served
    /// instead of binding `socketPath`.
    public var activationSocket: Int32?

    public init(stateDirectory: String = "/var/lib/keel", socketPath: String = "/run/keel/keeld.sock", group: String? = nil,
                jobTimeout: Duration = .seconds(10), eventBufferLimit: Int = 1024,
                listen: String? = nil, tlsDirectory: String? = nil, insecure: Bool = false, migrationVersions: [Int] = [2, 1],
                testHolds: [String] = []) {
        self.stateDirectory = stateDirectory
        self.socketPath = socketPath
        self.group = group
        self.jobTimeout = jobTimeout
        self.eventBufferLimit = eventBufferLimit
        self.listen = listen
        self.tlsDirectory = tlsDirectory
        self.insecure = insecure
        self.migrationVersions = migrationVersions
        self.testHolds = testHolds
    }
}

/// The daemon: the driver behind the HTTP/JSON API on a Unix socket, run as a service group
/// that shuts down gracefully on SIGTERM and SIGINT (in-flight requests finish; guests keep
/// running) and reloads `STATE/config.xml` on SIGHUP.
///
/// The driver keeps no state across processes, so a restarted daemon finds running guests
/// through their status files, and guests whose QEMU died meanwhile report `crashed`. The
/// `DomainWatcher` follows each running guest's QEMU on its event monitor and publishes exits
/// no job accounted for; `GET /v1/events` streams those and every job's events.
public struct Daemon: Sendable {
    public let configuration: DaemonConfiguration
    public let logger: Logger

    public init(configuration: DaemonConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Serves until SIGTERM or SIGINT.
    ///
    /// - Throws: `QEMUError` when the state directory, the configuration or the socket is unusable.
    public func run() async throws {
        let holder = try DriverHolder(stateDirectory: configuration.stateDirectory)
        let socket = try ControlSocket(path: configuration.socketPath, group: configuration.group)
        // Socket-activated (systemd's keeld.socket owns the socket file, its owner and mode), or
        // keeld binds the socket itself.
        let inherited = configuration.activationSocket
        if let inherited {
            let path = SocketActivation.path(of: inherited) ?? "?"
            if path != socket.path {
                logger.warning("the activation socket is not --socket; clients must be told", metadata: ["activation": "\(path)", "socket": "\(socket.path)"])
            }
        } else if try socket.prepare() {
            logger.notice("removed a stale socket", metadata: ["socket": "\(socket.path)"])
        }
        reattach(holder.driver)
        for recovery in await holder.driver.recoverInterruptedJobs() + holder.driver.reconcileRunStates() {
            logger.warning("recovered an interrupted job", metadata: [
                "domain": "\(recovery.name)", "job": "\(recovery.operation?.rawValue ?? "-")", "action": "\(recovery.action)",
            ])
        }
        await autostartOnce(holder.driver, marker: Self.autostartMarker(socketPath: configuration.socketPath))
        // Recovery and autostart parsed every definition and talked to every QEMU; what they
        // freed goes back to the kernel before keeld idles.
        HeapTrimmer.trim()

        let endpoint = try configuration.listen.map { try PeerEndpoint(parsing: $0) }
        if endpoint?.scheme == .tcp && !configuration.insecure {
            throw QEMUError(.invalidArgument, "--listen tcp://… is plaintext: add --insecure to accept that, or use tls:// with --tls-dir")
        }
        if endpoint?.scheme == .tls && configuration.tlsDirectory == nil {
            throw QEMUError(.invalidArgument, "--listen tls://… needs --tls-dir DIR (ca.pem, cert.pem, key.pem)")
        }
        let tls = try configuration.tlsDirectory.map { try PeerTLS(directory: $0) }
        let versions = configuration.migrationVersions.map { MigrationProtocolVersion(rawValue: $0) }
        let bus = EventBus(bufferLimit: configuration.eventBufferLimit)
        let migration = try MigrationService(holder: holder, tls: tls, listen: endpoint, versions: versions,
                                             holds: Set(configuration.testHolds), logger: logger, bus: bus)
        await migration.resolveInterrupted()
        let gates = DomainGateRegistry()
        let watcher = DomainWatcher(holder: holder, gates: gates, bus: bus, logger: logger)
        var api = API(
            holder: holder, gates: gates, metrics: DaemonMetrics(), jobTimeout: configuration.jobTimeout, logger: logger,
            bus: bus, watcher: watcher
        )
        api.migration = migration

        let listener = try inherited ?? socket.bind()
        // The socket file to remove when keeld stops: the one it bound, unless replaced meanwhile.
        let boundInode = inherited == nil ? socket.inode : nil
        defer { socket.remove(inode: boundInode) }
        let logger = self.logger
        var ready: Logger.Metadata = ["state": "\(holder.stateDirectory)", "pid": "\(getpid())"]
        if let inherited {
            ready["socket"] = "\(SocketActivation.path(of: inherited) ?? "?")"
            ready["activated"] = "true"
        } else {
            ready["socket"] = "\(socket.path)"
            ready["mode"] = "\(String(socket.mode, radix: 8))"
        }
        let server = APIServer(api: api, socket: socket, listener: listener, logger: logger) { [ready] in
            logger.info("keeld ready", metadata: ready)
        }
        var services: [any Service] = [server, ReloadService(holder: holder, logger: logger)]
        if let endpoint {
            services.append(PeerListenerService(service: migration, endpoint: endpoint))
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            // Shut down in reverse: the watcher first, which ends the event streams, so that the
            // HTTP server's drain does not wait for them.
            services: services + [watcher],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
        logger.info("keeld stopped; guests keep running")
    }

    /// Where the daemon notes that autostart ran: next to its socket, on the runtime directory
    /// (`/run/keel`), which the host clears at boot — so guests start once per boot, not again
    /// when keeld restarts after an administrator stopped them (libvirt does the same).
    static func autostartMarker(socketPath: String) -> String {
        let directory = socketPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return (directory.isEmpty ? "." : directory) + "/autostarted"
    }

    /// Starts the domains marked for autostart, once per boot.
    func autostartOnce(_ driver: Driver, marker: String) async {
        guard access(marker, F_OK) != 0 else {
            logger.debug("autostart already ran since boot", metadata: ["marker": "\(marker)"])
            return
        }
        for outcome in await driver.autostartAll() {
            if let error = outcome.error {
                logger.error("autostart failed", metadata: ["domain": "\(outcome.name)", "error": "\(error.message)"])
            } else {
                logger.info("autostarted", metadata: ["domain": "\(outcome.name)"])
            }
        }
        let fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 { close(fd) }
    }

    /// Logs what a previous daemon (or an embedded `keel`) left running.
    func reattach(_ driver: Driver) {
        do {
            for domain in try driver.list() where domain.state != .shutoff {
                let level: Logger.Level = domain.state == .crashed ? .warning : .info
                logger.log(level: level, "found domain", metadata: [
                    "domain": "\(domain.name)", "state": "\(domain.state.rawValue)", "pid": "\(domain.pid.map(String.init) ?? "-")",
                ])
            }
        } catch {
            logger.error("cannot list domains", metadata: ["error": "\(error)"])
        }
    }
}
