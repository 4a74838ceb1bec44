import KeelCPU
import KeelDomain
import KeelQMP

extension Driver {
    /// Starts a defined domain: QEMU starts paused, Keel reads what it really enabled and
    /// filtered, applies the live update for the CPU's `check` level (keeping the original CPU
    /// when they differ), then resumes unless `paused`.
    ///
    /// - Throws: `QEMUError` — `.incompatibleCPU` with the features for a CPU beyond this host
    ///   (or its ceiling), `.invalidState` when already running, `.processExited` when QEMU fails.
    @discardableResult
    public func start(name: String, paused: Bool = false) async throws -> DomainStatus {
        if let restored = try await startFromManagedSave(name: name, paused: paused) {
            return restored
        }
        let lock = try DomainLock.acquire(store: store, name: name, job: "start")
        defer { withExtendedLifetime(lock) {} }
        guard let definition = try store.definition(name) else {
            throw QEMUError(.notFound, "domain '\(name)' is not defined")
        }
        try ensureNotRunning(name)
        guard let accelerator = QEMUCapabilities.Accelerator(domainType: definition.virtType) else {
            throw QEMUError(.unsupported, "domain type '\(definition.virtType)' is not supported (kvm, qemu)")
        }
        let capabilities = try await capabilities(accelerator)
        guard let machine = capabilities.resolveMachine(definition.os.machine) else {
            throw QEMUError(.unsupported, "machine type '\(definition.os.machine ?? "")' is not supported by QEMU \(capabilities.version)")
        }
        let cpu = try prepareCPU(definition.cpu, domainType: definition.virtType, capabilities: capabilities)
        let arguments = try QEMUCommandLine.arguments(for: definition.with(cpu: cpu), options: .init(
            cpu: GuestCPU.commandLine(for: cpu, map: map), machine: machine, accelerator: accelerator, qmpSocket: store.qmpPath(name),
            eventSocket: store.eventsPath(name)
        ))
        return try await launch(
            definition: definition.with(cpu: cpu), arguments: arguments, capabilities: capabilities,
            reason: "booted", resume: !paused
        ) { client in
            let live = try await self.fetchLiveCPU(client)
            let (updated, original) = try self.applyLiveUpdate(to: cpu, enabled: live.enabled, filtered: live.filtered)
            return (updated, original, live.enabled)
        }
    }

    /// Stops a running domain at once (QMP quit, then SIGTERM, then SIGKILL).
    public func destroy(name: String) async throws {
        let lock = try DomainLock.acquire(store: store, name: name, job: "destroy")
        defer { withExtendedLifetime(lock) {} }
        let (state, status) = try self.state(of: name)
        guard let status, state != .shutoff else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        let process = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket)
        if state != .crashed {
            _ = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(2), commandDeadline: .seconds(2)) { client in
                try await client.execute("quit")
            }
            process.terminate(grace: .seconds(3), quitting: .milliseconds(100))
        }
        store.clearRuntime(name)
    }

    /// Pauses or resumes the guest's vCPUs.
    public func setPaused(name: String, _ paused: Bool) async throws {
        let lock = try DomainLock.acquire(store: store, name: name, job: paused ? "suspend" : "resume")
        defer { withExtendedLifetime(lock) {} }
        guard case (let state, var status?) = try self.state(of: name), state == .running || state == .paused else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        _ = try await QMP.Client.withConnection(to: status.qmpSocket) { client in
            try await client.execute(paused ? "stop" : "cont")
        }
        status.state = paused ? .paused : .running
        status.reason = "user"
        // Atomic, not fsynced: it follows a live QEMU, which a power loss ends as well.
        try store.save(status, durable: false)
    }

    func ensureNotRunning(_ name: String) throws {
        let (state, _) = try self.state(of: name)
        switch state {
        case .running, .paused:
            throw QEMUError(.invalidState, "domain '\(name)' is already running")
        case .crashed:
            store.clearRuntime(name)
        case .shutoff:
            break
        }
    }

    /// Resolves the CPU for a fresh start: libvirt's check defaults, the ceiling, the
    /// comparison for check='partial', host-model/minimum/optional resolution, and the model
    /// check against this QEMU.
    func prepareCPU(_ cpu: CPUDefinition?, domainType: String, capabilities: QEMUCapabilities) throws -> CPUDefinition? {
        guard var cpu else { return nil }
        if cpu.mode == .custom && cpu.model == nil { return cpu }
        if cpu.check == .default {
            switch cpu.mode ?? .custom {
            case .hostPassthrough, .maximum: cpu.check = .none
            case .hostModel: cpu.check = .partial
            case .custom: cpu.check = domainType == "kvm" ? .partial : .none
            }
        }
        do {
            if cpu.isPassthrough { return cpu }
            let host = capabilities.hostModel
            if cpu.check != .none, host != nil {
                let forbidden = try map.bits(of: cpu, .only(.forbid)).intersection(map.bits(ofFeatures: capabilities.availableFeatures))
                if let feature = map.features(in: forbidden).first {
                    throw QEMUError(.incompatibleCPU, "Host CPU provides forbidden feature '\(feature.name)'",
                                    features: map.problems(.forbidden, in: forbidden))
                }
            }
            if cpu.check == .partial, let host {
                var hostCPU = host
                hostCPU.type = .host
                hostCPU.mode = nil
                hostCPU.features = host.features.filter { $0.policy != .disable }.map { .init($0.name, nil) }
                let comparison = try map.compare(cpu.mode == .hostModel ? host : cpu, to: hostCPU)
                if comparison.result == .incompatible {
                    throw QEMUError(.incompatibleCPU, "the CPU is incompatible with host CPU: \(comparison.message ?? "")", features: comparison.features)
                }
            }
            cpu = try map.update(cpu, with: host)
        } catch let error as CPUError {
            throw QEMUError(.incompatibleCPU, error.message, features: error.features)
        }
        if let model = cpu.model, capabilities.cpuModel(named: model) == nil {
            throw QEMUError(.unsupported, "CPU model \(model) is not supported by hypervisor")
        }
        if let ceiling = configuration.cpuCeiling {
            let beyond = try map.bits(of: cpu, .all).subtracting(map.bits(of: ceiling, .all).union(map.hypervisorLeafBits))
            if !beyond.isEmpty {
                let problems = map.problems(.missing, in: beyond)
                throw QEMUError(.incompatibleCPU, "the CPU exceeds this host's CPU ceiling: " + problems.map { "\($0.name) (\($0.locations.map(\.description).joined(separator: ", ")))" }.joined(separator: ", "), features: problems)
            }
        }
        cpu.fallback = .forbid
        return cpu
    }

    /// Spawns QEMU, lets `verify` read and judge the live CPU, persists the status, and
    /// resumes when asked. Any failure stops the new QEMU and leaves no runtime files.
    func launch(
        definition: DomainDefinition, arguments: [String], capabilities: QEMUCapabilities, reason: String, resume: Bool,
        passing: [Int32] = [],
        verify: (QMP.Client) async throws -> (updated: CPUDefinition?, original: CPUDefinition?, words: [CPUIDWord]),
        beforeResume: ((QMP.Client) async throws -> Void)? = nil
    ) async throws -> DomainStatus {
        let name = definition.name
        // A stale event socket would be taken for this QEMU's before QEMU binds its own.
        POSIXFile.remove(store.eventsPath(name))
        let process = try QEMUProcess.spawn(
            binary: configuration.emulator, arguments: arguments, pidfile: store.pidPath(name),
            qmpSocket: store.qmpPath(name), log: store.logPath(name), passing: passing
        )
        do {
            return try await QMP.Client.withConnection(to: process.qmpSocket, deadline: .seconds(30)) { client in
                let (updated, original, words) = try await verify(client)
                var status = DomainStatus(
                    state: .paused, reason: reason, pid: process.pid, qmpSocket: process.qmpSocket,
                    accelerator: capabilities.accelerator, qemuVersion: capabilities.version,
                    live: definition.with(cpu: updated), originalCPU: original, cpuidWords: words
                )
                try store.save(status)
                if let beforeResume {
                    try await beforeResume(client)
                }
                if resume {
                    try await client.execute("cont")
                    status.state = .running
                    try store.save(status)
                }
                return status
            }
        } catch {
            let exited = !process.isAlive
            process.terminate(grace: .milliseconds(500))
            store.clearRuntime(name)
            if let qmpError = error as? QMP.Error {
                // QEMU's own words are in its log: they say why better than a closed socket.
                let detail = QEMUProcess.lastLines(of: store.logPath(name), from: process.logStart)
                let reason = exited || !detail.isEmpty ? "QEMU failed to start \(name)" : "QEMU stopped while starting \(name)"
                throw QEMUError(.processExited, reason + ": " + (detail.isEmpty ? "\(qmpError)" : detail))
            }
            throw error
        }
    }
}
