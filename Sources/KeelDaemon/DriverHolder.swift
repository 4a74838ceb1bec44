import KeelQEMU
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import UnixSignals

/// The daemon's current driver. The driver keeps no state across processes (everything is in
/// the state directory), so reloading `STATE/config.xml` is re-creating it; jobs already running
/// finish with the driver they started with.
final class DriverHolder: Sendable {
    let stateDirectory: String
    /// Parsed definitions and status files, shared by every driver of this daemon: queries
    /// such as dominfo read them on every request.
    let cache = ParsedFileCache()
    private let current: NIOLockedValueBox<Driver>

    /// Opens the state directory and reads its configuration.
    ///
    /// - Throws: `QEMUError` when the directory cannot be created or the configuration is invalid.
    init(stateDirectory: String) throws {
        self.stateDirectory = stateDirectory
        current = NIOLockedValueBox(try Driver(stateDirectory: stateDirectory, cache: cache))
    }

    var driver: Driver { current.withLockedValue { $0 } }

    /// Re-reads `STATE/config.xml`; an invalid file keeps the previous configuration.
    ///
    /// - Throws: `QEMUError` naming the file and the problem.
    func reload() throws {
        let driver = try Driver(stateDirectory: stateDirectory, cache: cache)
        current.withLockedValue { $0 = driver }
    }
}

/// Reloads the host configuration on SIGHUP until the daemon shuts down.
struct ReloadService: Service {
    let holder: DriverHolder
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            do {
                try holder.reload()
                let ceiling = holder.driver.configuration.cpuCeiling?.model ?? "none"
                logger.info("configuration reloaded", metadata: [
                    "file": "\(holder.driver.store.configurationPath)", "emulator": "\(holder.driver.configuration.emulator)", "cpu-ceiling": "\(ceiling)",
                ])
            } catch {
                logger.error("configuration not reloaded; keeping the previous one", metadata: ["error": "\(error)"])
            }
        }
    }
}
