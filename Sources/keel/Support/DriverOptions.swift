import ArgumentParser
import Glibc
import KeelCPU
import KeelQEMU

/// Options every driver command shares: where its work runs.
struct DriverOptions: ParsableArguments {
    @Option(
        name: .customLong("connect"),
        help: ArgumentHelp(
            "unix:PATH: ask keeld on its socket; embed:DIR: run the driver in this process on a state directory.",
            discussion: "Default: $KEEL_CONNECT, else keeld when its socket ($KEEL_SOCKET, else /run/keel/keeld.sock) exists, else embedded on the state directory.",
            valueName: "unix:PATH|embed:DIR"
        )
    )
    var connect: String?

    @Option(name: .customLong("state"), help: "Run embedded on this state directory (default: $KEEL_STATE, else /var/lib/keel).")
    var state: String?

    @Option(name: .customLong("cpu-map"), help: "A libvirt-format cpu_map directory for the embedded driver (default: the built-in map).")
    var cpuMap: String?

    func validate() throws {
        let connection = try self.connection()
        if case .daemon = connection, cpuMap != nil {
            throw ValidationError("--cpu-map applies to the embedded driver; keeld uses its own CPU map")
        }
    }

    /// Where this command runs, from the options and the environment.
    func connection() throws -> Connection {
        try Connection.resolve(connect: connect, state: state, environment: Connection.environment)
    }

    /// The backend the command talks to.
    func backend() throws -> any Backend {
        switch try connection() {
        case .embedded(let directory):
            return EmbeddedBackend(driver: try driver(stateDirectory: directory))
        case .daemon(let socket):
            return DaemonBackend(socketPath: socket, timeout: try Connection.requestTimeout())
        }
    }

    /// Opens the embedded driver, turning setup failures into one-line errors.
    func driver(stateDirectory: String) throws -> Driver {
        do {
            // --cpu-map, else $KEEL_CPU_MAP, else the built-in map.
            let map = try CPUMap.resolve(directory: cpuMap)
            return try Driver(stateDirectory: stateDirectory, map: map)
        } catch let error as QEMUError {
            throw CommandFailure(message: error.message)
        } catch let error as CPUError {
            throw CommandFailure(message: error.message)
        }
    }
}

/// Where driver verbs run.
enum Connection: Equatable {
    /// In this process, on a state directory.
    case embedded(stateDirectory: String)
    /// In keeld, through its socket.
    case daemon(socket: String)

    static let defaultSocket = "/run/keel/keeld.sock"
    static let defaultStateDirectory = "/var/lib/keel"

    /// The variables that choose a connection.
    struct Environment {
        var connect: String?
        var socket: String?
        var state: String?
    }

    static var environment: Environment {
        Environment(connect: variable("KEEL_CONNECT"), socket: variable("KEEL_SOCKET"), state: variable("KEEL_STATE"))
    }

    /// The connection for these options: `--connect`, else `--state` (embedded there), else
    /// `$KEEL_CONNECT`, else keeld when its socket exists, else embedded on `$KEEL_STATE` or
    /// /var/lib/keel.
    ///
    /// - Throws: `ValidationError` for a malformed `--connect` or `$KEEL_CONNECT`, or for
    ///   `--state` with a `--connect` naming elsewhere.
    static func resolve(connect: String?, state: String?, environment: Environment, socketExists: (String) -> Bool = isSocket) throws -> Connection {
        let state = state.flatMap { $0.isEmpty ? nil : $0 }
        if let connect {
            let connection = try parse(connect, origin: "--connect")
            if let state, connection != .embedded(stateDirectory: state) {
                throw ValidationError("--state \(state) selects the embedded driver on that directory; it cannot be combined with --connect \(connect)")
            }
            return connection
        }
        if let state { return .embedded(stateDirectory: state) }
        if let connect = environment.connect { return try parse(connect, origin: "KEEL_CONNECT") }
        let socket = environment.socket ?? defaultSocket
        if socketExists(socket) { return .daemon(socket: socket) }
        return .embedded(stateDirectory: environment.state ?? defaultStateDirectory)
    }

    /// `unix:PATH` or `embed:DIR`.
    static func parse(_ text: String, origin: String) throws -> Connection {
        if text.hasPrefix("unix:"), text.count > 5 { return .daemon(socket: String(text.dropFirst(5))) }
        if text.hasPrefix("embed:"), text.count > 6 { return .embedded(stateDirectory: String(text.dropFirst(6))) }
        throw ValidationError("\(origin) '\(text)' is not a connection: use unix:PATH (keeld's socket) or embed:DIR (a state directory)")
    }

    /// Whether `path` names a Unix socket.
    static func isSocket(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
    }

    /// `$KEEL_TIMEOUT`: seconds every request to keeld may take, overriding the defaults.
    static func requestTimeout() throws -> Duration? {
        guard let text = variable("KEEL_TIMEOUT") else { return nil }
        guard let seconds = Double(text), seconds.isFinite, seconds > 0, seconds <= 86_400 else {
            throw CommandFailure(message: "KEEL_TIMEOUT '\(text)' must be a number of seconds between 0 and 86400")
        }
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    static func variable(_ name: String) -> String? {
        guard let value = getenv(name).flatMap({ String(validatingCString: $0) }), !value.isEmpty else { return nil }
        return value
    }
}

/// Runs a driver call, turning its errors into one-line failures that keep CPU details.
func driverCall<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as QEMUError {
        throw CommandFailure(message: error.message)
    }
}
