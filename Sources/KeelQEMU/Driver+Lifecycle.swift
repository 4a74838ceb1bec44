import Glibc
import KeelQMP

extension DomainStore {
    /// The autostart markers (`STATE/autostart/NAME`, empty files).
    public var autostartDirectory: String { root + "/autostart" }
    public func autostartPath(_ name: String) -> String { autostartDirectory + "/\(name)" }
}

extension Driver {
    /// Asks the guest to power off (ACPI power button, QMP `system_powerdown`) and waits for
    /// QEMU to exit. Never kills: a guest that ignores the request keeps running.
    ///
    /// The job lock is held only while the request is sent, so `destroy` and queries work
    /// while this waits.
    ///
    /// - Parameter timeout: how long to wait for QEMU to exit.
    /// - Throws: `QEMUError` `.invalidState` when not running, `.timeout` ("domain X did not
    ///   shut down within N s") when the guest is still running after `timeout`.
    public func shutdown(name: String, timeout: Duration = .seconds(60)) async throws {
        try DomainStore.validate(name: name)
        let status: DomainStatus
        do {
            let lock = try DomainLock.acquire(store: store, name: name, job: "shutdown")
            defer { withExtendedLifetime(lock) {} }
            status = try runningStatus(name)
            _ = try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
                try await client.execute("system_powerdown")
            }
        } catch let error as QMP.Error {
            throw QEMUError(.processExited, "cannot shut down \(name): \(error)", cause: error)
        }
        let process = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket)
        let limit = ContinuousClock.now + timeout
        while process.isAlive {
            if ContinuousClock.now >= limit {
                throw QEMUError(.timeout, "domain '\(name)' did not shut down within \(Self.seconds(timeout)) s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        // QEMU is gone: clear its runtime files unless another command already did (and
        // perhaps started the domain again).
        if let lock = try? DomainLock.acquire(store: store, name: name, job: "shutdown", timeout: .seconds(2)) {
            defer { withExtendedLifetime(lock) {} }
            if let current = try? store.status(name), current.pid == status.pid {
                store.clearRuntime(name)
            }
        }
    }

    /// Resets the guest (QMP `system_reset`), as pressing the reset button: it boots again
    /// with the same QEMU, so the same CPU.
    ///
    /// - Throws: `QEMUError` `.invalidState` when not running.
    public func reboot(name: String) async throws {
        try DomainStore.validate(name: name)
        let lock = try DomainLock.acquire(store: store, name: name, job: "reboot")
        defer { withExtendedLifetime(lock) {} }
        let status = try runningStatus(name)
        do {
            _ = try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
                try await client.execute("system_reset")
            }
        } catch let error as QMP.Error {
            throw QEMUError(.processExited, "cannot reboot \(name): \(error)", cause: error)
        }
    }

    /// Marks or unmarks a persistent domain for `autostartAll()`.
    ///
    /// - Throws: `QEMUError` `.notFound` for a domain that is not defined.
    public func setAutostart(name: String, _ enabled: Bool) throws {
        try requireDefined(name)
        if enabled {
            try POSIXFile.makeDirectory(store.autostartDirectory)
            try POSIXFile.writeAtomically(store.autostartPath(name), "")
        } else {
            POSIXFile.remove(store.autostartPath(name))
            POSIXFile.syncDirectory(of: store.autostartPath(name))
        }
    }

    /// Whether a domain is marked for autostart.
    public func isAutostart(name: String) -> Bool {
        POSIXFile.exists(store.autostartPath(name))
    }

    /// What `autostartAll()` did for one domain.
    public struct AutostartOutcome: Sendable {
        public var name: String
        /// nil when it started (or restored its managed save).
        public var error: QEMUError?
    }

    /// Starts every marked, defined domain that is not running (restoring managed saves, as
    /// `start` does). One failure does not stop the others.
    @discardableResult
    public func autostartAll() async -> [AutostartOutcome] {
        var outcomes: [AutostartOutcome] = []
        for name in POSIXFile.list(store.autostartDirectory) where !name.hasPrefix(".") && !name.contains(".tmp.") {
            guard (try? store.definition(name)) != nil,
                  let (state, _) = try? self.state(of: name), state == .shutoff || state == .crashed
            else { continue }
            do {
                try await start(name: name)
                outcomes.append(AutostartOutcome(name: name, error: nil))
            } catch let error as QEMUError {
                outcomes.append(AutostartOutcome(name: name, error: error))
            } catch {
                outcomes.append(AutostartOutcome(name: name, error: QEMUError(.io, "cannot start \(name): \(error)")))
            }
        }
        return outcomes
    }

    /// The status of a running or paused domain.
    func runningStatus(_ name: String) throws -> DomainStatus {
        try DomainStore.validate(name: name)
        let (state, status) = try self.state(of: name)
        guard let status, state == .running || state == .paused else {
            if state == .shutoff, try store.definition(name) == nil {
                throw QEMUError(.notFound, "domain '\(name)' not found")
            }
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        return status
    }

    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        if attoseconds == 0 { return String(seconds) }
        let tenths = attoseconds / 100_000_000_000_000_000
        return "\(seconds).\(tenths)"
    }
}
