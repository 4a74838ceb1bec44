import KeelCPU
import KeelDomain
import KeelMigration
import KeelQEMU

/// Live migration to a peer `keeld`.
extension API {
    static let migrationEndpoints: [Endpoint] = [
        .task(.POST, "/v1/domains/{name}/migrate") { api, request in try await api.migrate(try API.name(request), request) },
    ]

    /// Migrates a running domain to the peer named by `destination` and answers once the
    /// destination owns the guest (or the migration failed and the guest is back here).
    func migrate(_ name: String, _ request: APIRequest) async throws -> APIResponse {
        let body = try JSONBody.decode(APIModels.MigrateRequest.self, from: request)
        guard let migration else {
            throw QEMUError(.unsupported, "migration is not available in this keeld")
        }
        let destination = try PeerEndpoint(parsing: body.destination)
        if let bandwidth = body.bandwidth, bandwidth < 1 { throw APIError.badRequest("bandwidth must be at least 1 MiB/s") }
        let live = body.live ?? true
        let options = MigrationOptions(live: live, paused: body.paused ?? false, persistent: body.persistent ?? false,
                                       dryRun: body.dryRun ?? false, tlsStream: body.tlsStream ?? false)
        let migrationRequest = MigrationService.Request(
            destination: destination, options: options, undefineSource: body.undefineSource ?? false,
            stream: .init(maxDowntimeMilliseconds: body.maxDowntime, bandwidthMiBps: body.bandwidth, tls: options.tlsStream)
        )
        let bus = self.bus
        let target = destination.description
        let result = try await gated("migrate", name, publishing: { (result: MigrationService.Result) -> [DomainEvent] in
            guard case .migrated? = result.machine.outcome else { return [] }
            var events = [DomainEvent(.migrated, domain: name, detail: target)]
            if migrationRequest.undefineSource { events.append(DomainEvent(.undefined, domain: name, detail: "migrated")) }
            return events
        }) { (_: Driver) async throws -> MigrationService.Result in
            // A dry run moves nothing: it has no events.
            if !options.dryRun { bus.publish(DomainEvent(.migrating, domain: name, detail: target)) }
            do {
                let result = try await migration.migrate(name: name, request: migrationRequest)
                // A dry run's CPU refusal is its answer, not a failure of the job.
                if options.dryRun, Self.refusedVerdict(result) != nil { return result }
                // A failure fails the job (its log line and metrics), with the protocol's reason.
                try Self.requireSuccess(result, name: name, destination: destination)
                return result
            } catch {
                if !options.dryRun { bus.publish(DomainEvent(.migrationFailed, domain: name, detail: APIError(error).message)) }
                throw error
            }
        }
        let machine = result.machine
        var running: Bool?
        var verdict: CPUVerdict?
        switch machine.outcome {
        case .migrated(let onDestination): running = onDestination
        case .accepted(let accepted): verdict = accepted ?? CPUVerdict()
        case nil: verdict = Self.refusedVerdict(result)
        }
        let domain = machine.request.domain
        return try JSONBody.response(APIModels.MigrateResult(
            name: name, job: "migrate", destination: destination.description, protocol: machine.version?.rawValue,
            state: try driver.state(of: name).0.rawValue, runningOnDestination: running, dryRun: options.dryRun,
            restorable: verdict.map(\.restorable), warnings: machine.warnings,
            downtime: machine.statistics?.downtime, measuredDowntime: result.measuredDowntime,
            totalTime: machine.statistics?.timeElapsed, setupTime: machine.statistics?.setupTime,
            cpu: options.dryRun ? (domain.updatedCPU ?? domain.migratable.cpu)?.model : nil,
            missing: verdict.map { $0.missing.map { FeatureBody($0.feature, reason: $0.reason) } },
            extra: verdict.map { $0.extra.map { FeatureBody($0.feature, reason: $0.reason) } },
            reasons: verdict?.reasons
        ))
    }

    /// The destination's refusal of the guest CPU, when that is how the migration ended.
    static func refusedVerdict(_ result: MigrationService.Result) -> CPUVerdict? {
        guard result.machine.phase == .failed, let error = result.machine.error, error.code == .incompatibleCPU else { return nil }
        return error.verdict
    }

    /// Throws the migration's failure as the driver's error, with the CPU features of a refusal.
    static func requireSuccess(_ result: MigrationService.Result, name: String, destination: PeerEndpoint) throws {
        let machine = result.machine
        guard machine.phase != .completed else { return }
        var error = machine.error ?? MigrationError(.operationFailed, "the migration ended in \(machine.phase.rawValue)")
        if result.aborted && machine.phase == .failed {
            error = MigrationError(.aborted, "operation aborted: migration-out of '\(name)' cancelled by client")
        }
        var message = error.message
        if machine.phase == .outcomeUnknown {
            message = "the outcome is unknown: the guest stays paused here until the destination answers (\(error.message))"
        }
        let features = (error.verdict?.missing ?? []).map(\.feature) + (error.verdict?.extra ?? []).map(\.feature)
        throw QEMUError(code(error.code), "migration of '\(name)' to \(destination) failed: \(message)", features: features)
    }

    static func code(_ code: MigrationError.Code) -> QEMUError.Code {
        switch code {
        case .incompatibleCPU: .incompatibleCPU
        case .invalidArgument, .invalidCookie: .invalidArgument
        case .invalidState: .invalidState
        case .unsupported, .unsupportedProtocol: .unsupported
        case .timeout: .timeout
        case .processExited: .processExited
        case .protocolViolation: .protocolViolation
        case .aborted: .aborted
        default: .io
        }
    }
}

extension APIModels {
    struct MigrateRequest: Codable, Sendable {
        /// `tls://HOST:PORT` or `tcp://HOST:PORT`: the destination keeld's peer listener.
        var destination: String
        var live: Bool?
        var paused: Bool?
        var persistent: Bool?
        var undefineSource: Bool?
        var dryRun: Bool?
        /// Carry QEMU's stream over QEMU's TLS with both hosts' peer identities.
        var tlsStream: Bool?
        /// Milliseconds.
        var maxDowntime: UInt64?
        /// MiB/s.
        var bandwidth: UInt64?
    }

    struct MigrateResult: Codable, Sendable {
        var name: String
        var job: String
        var destination: String
        var `protocol`: Int?
        /// The domain's state on this host afterwards (`shutoff` once migrated).
        var state: String
        var runningOnDestination: Bool?
        var dryRun: Bool
        var restorable: Bool?
        var warnings: [String]
        /// Milliseconds, as QEMU measured them: the stream's last pass with the guest paused.
        var downtime: UInt64?
        /// Milliseconds the guest did not run, measured by this keeld: from QEMU pausing it
        /// here until the destination reported it running (`MigrationService.Result`).
        var measuredDowntime: UInt64?
        /// Milliseconds, as QEMU measured them: the whole stream, and its setup.
        var totalTime: UInt64?
        var setupTime: UInt64?
        /// Dry run: the guest CPU's model, and the destination's verdict feature by feature.
        var cpu: String?
        var missing: [FeatureBody]?
        var extra: [FeatureBody]?
        var reasons: [String]?
    }
}
