import Glibc
import KeelCPU
import KeelDomain
import KeelMigration
import KeelQMP

/// The driver's steps of a live migration, one per action of `MigrationSource` and
/// `MigrationDestination`. Each step is idempotent where the protocol needs it (resume is "make
/// it run", stop and kill tolerate a dead process, cancel tolerates a finished migration), opens
/// its own short QMP connection, and leaves the decisions to the state machines.
extension Driver {
    /// The status `reason` of a QEMU started for an incoming migration, until the takeover.
    public static let incomingReason = "incoming"

    /// The progress record (`domjobinfo`) and abort request (`domjobabort`) of a migration on
    /// one domain; `finish()` removes the record.
    public final class MigrationJob: @unchecked Sendable {
        let recorder: DomainJobRecorder

        init(recorder: DomainJobRecorder) {
            self.recorder = recorder
        }

        public func finish() {
            recorder.finish()
        }

        /// Whether `domjobabort` cancelled the stream.
        public var aborted: Bool { recorder.aborted }
    }

    /// Starts the job record of a migration on `name`.
    public func beginMigrationJob(name: String, incoming: Bool) -> MigrationJob {
        MigrationJob(recorder: DomainJobRecorder(store: store, name: name, operation: incoming ? .migrationIn : .migrationOut))
    }

    // MARK: source

    /// What the source offers at Begin: the migratable definition (original CPU), the updated
    /// CPU and ABI record for the cookie, the persistent definition, whether the guest runs.
    ///
    /// - Throws: `QEMUError` `.invalidState` when the domain does not run here.
    public func outgoingMigration(name: String) throws -> MigrationSource.Domain {
        guard case (let state, let status?) = try self.state(of: name), state == .running || state == .paused else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        guard status.reason != Self.incomingReason else {
            throw QEMUError(.invalidState, "domain '\(name)' is being migrated to this host")
        }
        let cookie = saveCookie(for: status)
        return MigrationSource.Domain(
            migratable: status.migratableDefinition, updatedCPU: cookie.cpu, abiRecord: cookie.abiRecord,
            persistent: try store.definition(name), running: state == .running
        )
    }

    /// QMP `migrate` to `uri` with the stream parameters (unlimited bandwidth unless capped),
    /// over QEMU's TLS with `tls` (`disableMigrationTLS` removes it afterwards). Returns once
    /// QEMU accepted the command; `waitOutgoingMigration` follows the stream.
    ///
    /// - Returns: when `migrate` was sent, where QEMU's `total-time` starts.
    @discardableResult
    public func startOutgoingMigration(name: String, uri: String, parameters: MigrationSource.StreamParameters,
                                       tls: MigrationStreamTLS? = nil) async throws -> ContinuousClock.Instant {
        let status = try liveStatus(name)
        return try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(10), commandDeadline: .seconds(30)) { client in
            var arguments: [String: QMP.Value] = [
                "max-bandwidth": .int(Int64(parameters.bandwidthMiBps.map { $0 << 20 } ?? (1 << 40))),
            ]
            if let downtime = parameters.maxDowntimeMilliseconds {
                arguments["downtime-limit"] = .int(Int64(downtime))
            }
            try await client.execute("migrate-set-parameters", arguments: arguments)
            if let tls {
                try await self.enableMigrationTLS(tls, name: name, client: client)
            }
            let issued = ContinuousClock.now
            try await client.execute("migrate", arguments: ["uri": .string(uri)])
            return issued
        }
    }

    /// Follows the outgoing stream until QEMU completes it (the guest is then paused), recording
    /// progress in `job` and honouring `domjobabort` (cancelled in QEMU).
    ///
    /// - Parameter stall: how long the stream may make no progress before it is a timeout.
    /// - Throws: `QEMUError` `.io` when QEMU fails or cancels it, `.aborted`, `.timeout`,
    ///   `.processExited` when QEMU is gone.
    public func waitOutgoingMigration(name: String, job: MigrationJob, stall: Duration = .seconds(60)) async throws -> MigrationStatistics {
        let status = try liveStatus(name)
        do {
            return try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(10), commandDeadline: .seconds(30)) { client in
                var last: QMP.Value = [:]
                var lastProgress = ContinuousClock.now
                var transferred: UInt64 = 0
                try await self.waitForMigration(client, timeout: .seconds(24 * 3600)) { info in
                    last = info
                    let now = info["ram"]?["transferred"]?.uint64Value ?? 0
                    if now != transferred {
                        transferred = now
                        lastProgress = .now
                    } else if ContinuousClock.now - lastProgress > stall {
                        _ = try? await client.execute("migrate_cancel")
                        throw QEMUError(.timeout, "the migration stream made no progress for \(stall)")
                    }
                    try await job.recorder.update(info, client: client)
                }
                last = (try? await client.execute("query-migrate")) ?? last
                // The guest is paused and may be the destination's: a restarted keeld must not
                // treat this as an interrupted job to cancel and resume.
                job.finish()
                // QEMU paused the guest: say so until the destination's word settles it.
                if var paused = try? self.store.status(name) {
                    paused.state = .paused
                    paused.reason = "migration"
                    // Not durable: the guest waits for this on the way to the destination.
                    try? self.store.save(paused, durable: false)
                }
                return Self.statistics(last)
            }
        } catch let error as QMP.Error {
            let alive = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).isAlive
            throw QEMUError(alive ? .io : .processExited, "migration of '\(name)': \(error)", cause: error)
        }
    }

    /// `migrate_cancel`; harmless when nothing runs or QEMU is gone.
    public func cancelOutgoingMigration(name: String) async {
        guard let status = try? store.status(name) else { return }
        _ = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
            _ = try? await client.execute("migrate_cancel")
            // Wait until QEMU has left the migration, so that `cont` is not refused.
            for _ in 0..<500 {
                let state = (try? await client.execute("query-migrate"))?["status"]?.stringValue ?? "none"
                if ["cancelled", "failed", "completed", "none"].contains(state) { break }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    /// Pauses the guest (an offline migration).
    public func pauseForMigration(name: String) async throws {
        let status = try liveStatus(name)
        _ = try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
            try await client.execute("stop")
        }
    }

    /// Makes the guest run (`cont` when QEMU paused it) and records it running; a running guest
    /// is left alone.
    public func resumeAfterMigration(name: String) async throws {
        var status = try liveStatus(name)
        try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
            let running = try await client.execute("query-status")["running"]?.boolValue ?? false
            if !running {
                try await client.execute("cont")
            }
        }
        if status.state != .running {
            status.state = .running
            // Not durable: on a migration's destination the guest is paused until this returns.
            try store.save(status, durable: false)
        }
    }

    /// Stops the source's QEMU once the destination owns the guest; tolerates a dead process.
    public func stopMigratedQEMU(name: String) async {
        guard let status = try? store.status(name) else { return }
        let process = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket)
        if process.isAlive {
            _ = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(2), commandDeadline: .seconds(2)) { client in
                try await client.execute("quit")
            }
            process.terminate(grace: .seconds(3), quitting: .milliseconds(100))
        }
    }

    /// The domain left this host: no runtime files, and no definition when `undefine`.
    public func markMigrated(name: String, undefine: Bool) {
        store.clearRuntime(name)
        if undefine {
            store.removeDefinition(name)
        }
    }

    // MARK: destination

    /// What Prepare decided: the verdict and the capabilities QEMU will be started with.
    public struct IncomingPlan: Sendable {
        public var verdict: CPUVerdict
        public var capabilities: QEMUCapabilities
        /// Whether a definition of the domain existed before the migration (kept on discard).
        public var hadDefinition: Bool
    }

    /// Reserves the domain and judges the incoming CPU, before any QEMU starts: the domain must
    /// not run here nor be defined under another UUID; the accelerator and machine type must be
    /// available; the CPU verdict is the one restore uses.
    ///
    /// - Throws: `QEMUError` for everything but the CPU, which the verdict reports.
    public func planIncoming(definition: DomainDefinition, incoming: IncomingCPU) async throws -> IncomingPlan {
        let name = definition.name
        try DomainStore.validate(name: name)
        let existing = try store.definition(name)
        if let existing, let uuid = existing.uuid, uuid.lowercased() != (definition.uuid ?? "").lowercased() {
            throw QEMUError(.alreadyExists, "domain '\(name)' is already defined with uuid \(uuid)")
        }
        try ensureNotRunning(name)
        guard let accelerator = QEMUCapabilities.Accelerator(domainType: definition.virtType) else {
            throw QEMUError(.unsupported, "domain type '\(definition.virtType)' is not supported (kvm, qemu)")
        }
        let capabilities = try await self.capabilities(accelerator)
        guard let machine = definition.os.machine, capabilities.machines.contains(where: { $0.name == machine }) else {
            throw QEMUError(.unsupported, "machine type '\(definition.os.machine ?? "")' is not supported by QEMU \(capabilities.version)")
        }
        let verdict: CPUVerdict
        do {
            verdict = try self.verdict(for: incoming, capabilities: capabilities)
        } catch let error as CPUError {
            throw QEMUError(.invalidArgument, error.message)
        }
        return IncomingPlan(verdict: verdict, capabilities: capabilities, hadDefinition: existing != nil)
    }

    /// Starts QEMU paused with `-incoming defer` and the CPU `check` names (pinned completely,
    /// or the original one prepared as for a fresh start), and records the domain as incoming.
    public func startIncoming(definition: DomainDefinition, check: MigrationDestination.CPUCheck, capabilities: QEMUCapabilities) async throws {
        let name = definition.name
        let startCPU: CPUDefinition?
        let cpuArgument: String?
        switch check {
        case .equal(let pinned):
            startCPU = pinned
            cpuArgument = try GuestCPU.pinnedCommandLine(for: pinned, map: map)
        case .updateLive(let original):
            startCPU = try prepareCPU(original, domainType: definition.virtType, capabilities: capabilities)
            cpuArgument = GuestCPU.commandLine(for: startCPU, map: map)
        }
        let live = definition.with(cpu: startCPU)
        let arguments = try QEMUCommandLine.arguments(for: live, options: .init(
            cpu: cpuArgument, machine: definition.os.machine ?? "", accelerator: capabilities.accelerator,
            qmpSocket: store.qmpPath(name), eventSocket: store.eventsPath(name), incoming: true
        ))
        let process = try QEMUProcess.spawn(
            binary: configuration.emulator, arguments: arguments, pidfile: store.pidPath(name),
            qmpSocket: store.qmpPath(name), log: store.logPath(name)
        )
        let status = DomainStatus(
            state: .paused, reason: Self.incomingReason, pid: process.pid, qmpSocket: process.qmpSocket,
            accelerator: capabilities.accelerator, qemuVersion: capabilities.version,
            live: live, originalCPU: nil, cpuidWords: []
        )
        do {
            try store.save(status)
        } catch {
            process.terminate(grace: .milliseconds(500))
            store.clearRuntime(name)
            throw error
        }
    }

    /// Reads the CPU QEMU really built and checks it: equal to the pinned CPU (`check='full'`),
    /// or updated live as on a fresh start. Records the updated and original CPUs.
    ///
    /// - Throws: `QEMUError` `.incompatibleCPU` naming the features that differ.
    public func checkIncomingCPU(name: String, check: MigrationDestination.CPUCheck, original: CPUDefinition?) async throws {
        var status = try liveStatus(name)
        let (updated, originalCPU, words) = try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(30)) { client in
            let live = try await self.fetchLiveCPU(client)
            switch check {
            case .equal(let expected):
                do {
                    _ = try self.applyLiveUpdate(to: expected, enabled: live.enabled, filtered: live.filtered)
                } catch let error as QEMUError {
                    throw QEMUError(.incompatibleCPU, "the incoming guest CPU would differ from the source's: \(error.message)", features: error.features)
                }
                let kept = original.flatMap { $0.isABIEqual(to: expected) ? nil : $0 }
                return (Optional(expected), kept, live.enabled)
            case .updateLive:
                let (updated, original) = try self.applyLiveUpdate(to: status.live.cpu, enabled: live.enabled, filtered: live.filtered)
                return (updated, original, live.enabled)
            }
        }
        status.live = status.live.with(cpu: updated)
        status.originalCPU = originalCPU
        status.cpuidWords = words
        try store.save(status, durable: false)
    }

    /// `migrate-incoming tcp:HOST:0` and the URI QEMU really listens on (the port it chose);
    /// with `tls`, QEMU accepts the stream only over TLS from a peer of the same CA.
    public func listenIncoming(name: String, host: String, tls: MigrationStreamTLS? = nil) async throws -> String {
        let status = try liveStatus(name)
        let address = host.contains(":") ? "[\(host)]" : host
        return try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(10), commandDeadline: .seconds(30)) { client in
            if let tls {
                try await self.enableMigrationTLS(tls, name: name, client: client)
            }
            try await client.execute("migrate-incoming", arguments: ["uri": .string("tcp:\(address):0")])
            let info = try await client.execute("query-migrate")
            for socket in info["socket-address"]?.arrayValue ?? [] {
                if let port = socket["port"]?.stringValue ?? socket["port"]?.int64Value.map(String.init) {
                    return "tcp:\(address):\(port)"
                }
            }
            throw QEMUError(.protocolViolation, "QEMU did not say which port it listens on for '\(name)'")
        }
    }

    /// Waits until the incoming QEMU has loaded the whole stream (the guest is then paused).
    public func waitIncomingMigration(name: String, job: MigrationJob, timeout: Duration = .seconds(3600)) async throws {
        let status = try liveStatus(name)
        do {
            try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(10), commandDeadline: .seconds(30)) { client in
                try await self.waitForMigration(client, timeout: timeout) { info in
                    try await job.recorder.update(info, client: client)
                }
            }
        } catch let error as QMP.Error {
            throw QEMUError(.processExited, "the incoming QEMU of '\(name)' stopped: \(error)", cause: error)
        }
    }

    /// The domain becomes this host's: its status says so, and a persistent migration stores
    /// the definition.
    public func commitIncoming(name: String, definition: DomainDefinition, persistent: Bool) throws {
        var status = try liveStatus(name)
        if persistent {
            // The definition outlives the QEMU (the source may undefine its own): durable.
            try store.save(definition)
        }
        status.reason = "migrated"
        try store.save(status, durable: false)
    }

    /// Kills the incoming QEMU (tolerates a dead one) and removes its runtime files.
    public func killIncoming(name: String) {
        if let status = try? store.status(name) {
            QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).terminate(grace: .milliseconds(500))
        }
        store.clearRuntime(name)
        removeMigrationTLSDirectory(name)
    }

    /// What this host holds of `name`, for a peer's `query`: `incoming` while an incoming QEMU
    /// waits, `running`/`paused` once the domain runs here, else `absent`.
    public func migrationPresence(name: String) -> MigrationMessage.DomainPresence {
        guard (try? DomainStore.validate(name: name)) != nil,
              case (let state, let status?)? = try? self.state(of: name)
        else { return .absent }
        switch state {
        case .running, .paused:
            if status.reason == Self.incomingReason { return .incoming }
            return state == .running ? .running : .paused
        case .shutoff, .crashed:
            return .absent
        }
    }

    private func liveStatus(_ name: String) throws -> DomainStatus {
        guard let status = try store.status(name) else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        guard QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).isAlive else {
            throw QEMUError(.processExited, "the QEMU of '\(name)' is gone")
        }
        return status
    }

    /// libvirt's job statistics from QEMU's `query-migrate` reply.
    static func statistics(_ info: QMP.Value) -> MigrationStatistics {
        var statistics = MigrationStatistics()
        statistics.timeElapsed = info["total-time"]?.uint64Value ?? 0
        statistics.downtime = info["downtime"]?.uint64Value
        statistics.setupTime = info["setup-time"]?.uint64Value
        if let ram = info["ram"] {
            statistics.memoryTotal = ram["total"]?.uint64Value ?? 0
            statistics.memoryProcessed = ram["transferred"]?.uint64Value ?? 0
            statistics.memoryRemaining = ram["remaining"]?.uint64Value ?? 0
            statistics.memoryBPS = ram["mbps"]?.doubleValue.map { UInt64(max(0, $0) * 1_000_000 / 8) } ?? 0
            statistics.memoryDirtyRate = ram["dirty-pages-rate"]?.uint64Value ?? 0
            statistics.memoryIteration = ram["dirty-sync-count"]?.uint64Value ?? 0
            statistics.memoryPageSize = ram["page-size"]?.uint64Value ?? 0
        }
        return statistics
    }
}
