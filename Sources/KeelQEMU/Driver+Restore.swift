import Glibc
import KeelCPU
import KeelDomain
import KeelQMP
import KeelSaveImage
import KeelXML

extension Driver {
    /// What restoring an image would do on this host, decided before QEMU starts.
    public struct RestorePlan: Sendable {
        public var definition: DomainDefinition
        public var cookie: SaveCookie?
        /// The CPU the guest must get: the cookie CPU, else the XML CPU.
        public var targetCPU: CPUDefinition?
        public var verdict: CPUVerdict
        public var capabilities: QEMUCapabilities
        public var wasRunning: Bool
        public var info: SaveImageInfo
    }

    /// Reads an image and decides whether this host can reproduce its guest CPU exactly.
    ///
    /// - Parameter xml: a replacement domain XML, ABI-checked against the image's.
    /// - Throws: `QEMUError` for an incomplete or corrupt image, a corrupt cookie, an
    ///   unavailable accelerator or machine type — all before any QEMU starts.
    public func planRestore(path: String, xml: String? = nil) async throws -> RestorePlan {
        let info: SaveImageInfo
        do {
            info = try SaveImage.read(path: path)
        } catch let error as SaveImageError {
            throw QEMUError(.invalidArgument, "cannot restore from \(path): \(error.message)", cause: error)
        }
        var definition: DomainDefinition
        do {
            definition = try DomainDefinition(xmlString: info.dataArea.xml)
            if let xml {
                let replacement = try DomainDefinition(xmlString: xml)
                try definition.checkABIStability(against: replacement)
                definition = replacement
            }
        } catch let error as DomainError {
            throw QEMUError(.invalidArgument, "cannot restore from \(path): \(error.message)")
        }
        var cookie: SaveCookie?
        if let text = info.dataArea.cookie {
            do {
                cookie = try SaveCookie(xmlString: text)
            } catch let error as DomainError {
                throw QEMUError(.invalidArgument, "cannot restore from \(path): corrupt cookie: \(error.message)")
            }
        }
        guard let accelerator = QEMUCapabilities.Accelerator(domainType: definition.virtType) else {
            throw QEMUError(.unsupported, "domain type '\(definition.virtType)' is not supported (kvm, qemu)")
        }
        if let recorded = cookie?.abiRecord?.accelerator, recorded != accelerator.rawValue {
            throw QEMUError(.invalidArgument, "cannot restore from \(path): the image was saved under \(recorded) but its domain asks for \(accelerator.rawValue)")
        }
        let capabilities: QEMUCapabilities
        do {
            capabilities = try await self.capabilities(accelerator)
        } catch let error as QEMUError {
            throw QEMUError(error.code, "cannot restore from \(path): \(error.message)", cause: error)
        }
        guard let machine = definition.os.machine, capabilities.machines.contains(where: { $0.name == machine }) else {
            throw QEMUError(.unsupported, "cannot restore from \(path): machine type '\(definition.os.machine ?? "")' is not supported by QEMU \(capabilities.version)")
        }
        let incoming = IncomingCPU(original: definition.cpu, sideChannel: cookie?.cpu, abiRecord: cookie?.abiRecord)
        let verdict: CPUVerdict
        do {
            verdict = try self.verdict(for: incoming, capabilities: capabilities)
        } catch let error as CPUError {
            throw QEMUError(.invalidArgument, "cannot restore from \(path): \(error.message)")
        }
        return RestorePlan(definition: definition, cookie: cookie, targetCPU: incoming.target, verdict: verdict,
                           capabilities: capabilities, wasRunning: info.header.wasRunning, info: info)
    }

    /// Whether this host — its QEMU under the guest's accelerator and its CPU ceiling — can
    /// reproduce an incoming guest CPU exactly: the one verdict restore and incoming migration
    /// share, decided before any QEMU starts.
    ///
    /// - Throws: `CPUError` for a model or feature the CPU map does not know.
    public func verdict(for incoming: IncomingCPU, capabilities: QEMUCapabilities) throws -> CPUVerdict {
        try incoming.verdict { cpu in
            try CPUVerdict.decide(for: cpu, capabilities: capabilities, ceiling: configuration.cpuCeiling, map: map)
        }
    }

    /// Restores a domain from an image.
    ///
    /// Before QEMU starts, the saved CPU is judged against this host (capabilities and ceiling)
    /// and refused with every feature named when it cannot be reproduced. QEMU then starts with
    /// the cookie CPU pinned completely and `-incoming defer`; the live CPU is verified to equal
    /// the cookie CPU before the stream is fed through an fd; the guest resumes when the image
    /// (or `running`) says so. Images without a cookie start the XML CPU and update it live.
    ///
    /// - Throws: `QEMUError`; the image is never modified.
    @discardableResult
    public func restore(path: String, running: Bool? = nil, xml: String? = nil) async throws -> DomainStatus {
        let plan = try await planRestore(path: path, xml: xml)
        let definition = plan.definition
        try DomainStore.validate(name: definition.name)
        let lock = try DomainLock.acquire(store: store, name: definition.name, job: "restore")
        defer { withExtendedLifetime(lock) {} }
        let job = DomainJobRecorder(store: store, name: definition.name, operation: .restore, file: path)
        defer { job.finish() }
        if let existing = try store.definition(definition.name), existing.uuid != definition.uuid {
            throw QEMUError(.alreadyExists, "domain '\(definition.name)' is already defined with uuid \(existing.uuid ?? "")")
        }
        try ensureNotRunning(definition.name)
        guard plan.verdict.restorable else {
            throw QEMUError(.incompatibleCPU, "this host cannot reproduce the saved guest CPU: \(plan.verdict.message)",
                            features: plan.verdict.missing.map(\.feature) + plan.verdict.extra.map(\.feature))
        }
        let pinned = IncomingCPU(original: definition.cpu, sideChannel: plan.cookie?.cpu, abiRecord: plan.cookie?.abiRecord).pinned
        let cpuArgument: String?
        let startCPU: CPUDefinition?
        if let pinned {
            startCPU = pinned
            cpuArgument = try GuestCPU.pinnedCommandLine(for: pinned, map: map)
        } else {
            startCPU = try prepareCPU(definition.cpu, domainType: definition.virtType, capabilities: plan.capabilities)
            cpuArgument = GuestCPU.commandLine(for: startCPU, map: map)
        }
        let arguments = try QEMUCommandLine.arguments(for: definition.with(cpu: startCPU), options: .init(
            cpu: cpuArgument, machine: definition.os.machine ?? "", accelerator: plan.capabilities.accelerator,
            qmpSocket: store.qmpPath(definition.name), eventSocket: store.eventsPath(definition.name), incoming: true
        ))
        let reader: SaveImageReader
        do {
            reader = try SaveImageReader(path: path)
        } catch let error as SaveImageError {
            throw QEMUError(.invalidArgument, "cannot restore from \(path): \(error.message)")
        }
        defer { reader.close() }
        return try await launch(
            definition: definition.with(cpu: startCPU), arguments: arguments, capabilities: plan.capabilities,
            reason: "restored", resume: running ?? plan.wasRunning
        ) { client in
            let live = try await self.fetchLiveCPU(client)
            if let pinned {
                var expected = pinned
                expected.check = .full
                do {
                    _ = try self.applyLiveUpdate(to: expected, enabled: live.enabled, filtered: live.filtered)
                } catch let error as QEMUError {
                    throw QEMUError(.incompatibleCPU, "the restored guest CPU would differ from the saved one: \(error.message)", features: error.features)
                }
                // The XML CPU is the original; the cookie CPU is what the guest has.
                let original = definition.cpu.flatMap { $0.isABIEqual(to: pinned) ? nil : $0 }
                return (pinned, original, live.enabled)
            }
            let (updated, original) = try self.applyLiveUpdate(to: startCPU, enabled: live.enabled, filtered: live.filtered)
            return (updated, original, live.enabled)
        } beforeResume: { client in
            let stream: SaveImageStream
            do {
                stream = try reader.openStream()
            } catch let error as SaveImageError {
                throw QEMUError(.io, "cannot read the stream of \(path): \(error.message)")
            }
            do {
                try await client.sendFileDescriptor(stream.fileDescriptor, name: "keel-restore")
                try await client.execute("migrate-incoming", arguments: ["uri": "fd:keel-restore"])
                try await self.waitForMigration(client) { info in try await job.update(info, client: client, stream: reader) }
                try stream.finish()
            } catch {
                stream.cancel()
                if let error = error as? SaveImageError {
                    throw QEMUError(.io, "cannot read the stream of \(path): \(error.message)")
                }
                throw error
            }
        }
    }
}
