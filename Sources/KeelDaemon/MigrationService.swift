#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import KeelCPU
import KeelDomain
import KeelMigration
import KeelQEMU
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// `keeld`'s side of live migration: it drives `MigrationSource` for an outgoing migration (the
/// API's `migrate`) and a `MigrationDestination` for each peer that connects, performing their
/// actions with the driver and the peer channel and feeding the results back.
///
/// The machines decide; this only performs, with deadlines: every phase that waits for a peer
/// or a local step is bounded, the QEMU stream by its progress. The machine's phase is written to
/// `STATE/run/NAME.migration.json` before the actions of each transition are performed.
final class MigrationService: Sendable {
    let holder: DriverHolder
    let tls: PeerTLS?
    let listen: PeerEndpoint?
    let host: MigrationMessage.HostIdentity
    /// The protocol versions this host speaks (`--migration-protocol` narrows them).
    let versions: [MigrationProtocolVersion]
    /// Test-only phases to hold at (`ROLE:PHASE`); empty in production.
    let holds: Set<String>
    let logger: Logger
    /// Where the destination side publishes its events (the source's are the API job's).
    let bus: EventBus?
    /// The record last written per domain, so that an unchanged one is not written again.
    private let lastRecord = NIOLockedValueBox<[String: [UInt8]]>([:])

    init(holder: DriverHolder, tls: PeerTLS?, listen: PeerEndpoint?, versions: [MigrationProtocolVersion],
         holds: Set<String> = [], logger: Logger, bus: EventBus? = nil) throws {
        self.holder = holder
        self.bus = bus
        self.tls = tls
        self.listen = listen
        self.versions = versions
        self.holds = holds
        self.logger = logger
        // The UUID `keel capabilities` reports: STATE/host-uuid, else /etc/machine-id. Two keelds on
        // one machine are two hosts only with their own STATE/host-uuid.
        host = MigrationMessage.HostIdentity(name: Self.hostName(), uuid: HostCapabilities.hostUUID(stateDirectory: holder.stateDirectory))
    }

    var driver: Driver { holder.driver }

    /// How long a peer message or a local step may take.
    static let stepDeadline: Duration = .seconds(120)
    /// How long the destination waits for `finish` while the stream runs.
    static let streamDeadline: Duration = .seconds(6 * 3600)

    // MARK: the source

    /// What an outgoing migration asks for.
    struct Request: Sendable {
        var destination: PeerEndpoint
        var options: MigrationOptions
        var undefineSource: Bool
        var stream: MigrationSource.StreamParameters
    }

    /// What an outgoing migration ended with.
    struct Result: Sendable {
        var machine: MigrationSource
        /// Whether `domjobabort` cancelled the stream (the destination may report its own
        /// reaction to that first).
        var aborted: Bool
        /// Milliseconds the guest did not run, on this host's clock: from QEMU pausing it here
        /// (the stream's start plus QEMU's `total-time` minus its `downtime`; an offline
        /// migration's pause) until the destination's `finish-reply` said it runs there. An
        /// upper bound of what the guest saw (it includes the reply's way back); nil when the
        /// guest did not move running.
        var measuredDowntime: UInt64?
    }

    private enum SourceInput: Sendable {
        case event(MigrationSource.Event)
        case tick
    }

    /// Migrates `name` to the destination and returns the final machine (completed or failed).
    ///
    /// - Throws: `QEMUError` when nothing started (the domain does not run, the peer cannot be
    ///   reached or refuses the TLS handshake): the guest is untouched.
    func migrate(name: String, request: Request) async throws -> Result {
        let began = ContinuousClock.now
        let driver = self.driver
        let domain = try driver.outgoingMigration(name: name)
        var streamTLS: MigrationStreamTLS?
        if request.options.tlsStream {
            guard let tls else {
                throw QEMUError(.invalidArgument, "--tls-stream needs this keeld's TLS identity for QEMU's TLS: start keeld with --tls-dir DIR")
            }
            // The destination's certificate must carry the name the user migrates to.
            streamTLS = MigrationStreamTLS(identity: tls.directory, endpoint: .client, hostname: request.destination.host)
        }
        let connection = try await PeerChannel.connect(to: request.destination, tls: tls)
        var machine = MigrationSource(request: .init(
            domain: domain, host: host, options: request.options, undefineSource: request.undefineSource,
            stream: request.stream, versions: versions
        ))
        let logger = self.logger
        let (inputs, continuation) = AsyncStream<SourceInput>.makeStream()
        let job = driver.beginMigrationJob(name: name, incoming: false)
        defer { job.finish() }
        var iterator = inputs.makeAsyncIterator()
        // When `migrate` was sent, and when QEMU paused the guest (from its own numbers).
        var streamIssued: ContinuousClock.Instant?
        var guestStopped: ContinuousClock.Instant?
        var measuredDowntime: UInt64?
        try? await connection.executeThenClose { inbound, outbound in
            await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    await Self.readFrames(inbound) { continuation.yield(.event($0.map { .received($0) } ?? .peerLost)) }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: .milliseconds(250))
                        continuation.yield(.tick)
                    }
                }
                var since = ContinuousClock.now
                var loggedPhase: MigrationSource.Phase?
                var actions = machine.handle(.start)
                var held: MigrationSource.Phase?
                machineLoop: while true {
                    if loggedPhase != machine.phase {
                        loggedPhase = machine.phase
                        Self.logPhase(logger, name: name, role: "source", phase: machine.phase.rawValue, since: began)
                    }
                    self.persist(name: name, role: "source", phase: machine.phase.rawValue, version: machine.version, uri: machine.streamURI,
                                 peer: request.destination.description, uuid: domain.migratable.uuid, running: domain.running,
                                 undefine: request.undefineSource, migrated: machine.phase == .completed && machine.guest == .destination)
                    if held != machine.phase {
                        held = machine.phase
                        await self.hold(name: name, role: "source", phase: machine.phase.rawValue)
                    }
                    for action in actions {
                        switch action {
                        case .send(let message):
                            do {
                                try await outbound.write(PeerChannel.frame(message))
                            } catch {
                                continuation.yield(.event(.peerLost))
                            }
                        case .warn(let text):
                            logger.warning("migration", metadata: ["domain": "\(name)", "warning": "\(text)"])
                        case .pauseGuest:
                            do {
                                try await driver.pauseForMigration(name: name)
                                // An offline migration: the guest's downtime starts here.
                                guestStopped = .now
                                continuation.yield(.event(.guestPaused))
                            } catch {
                                continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                            }
                        case .startMigration(let uri, let parameters):
                            do {
                                streamIssued = try await driver.startOutgoingMigration(name: name, uri: uri, parameters: parameters,
                                                                                       tls: parameters.tls ? streamTLS : nil)
                                group.addTask {
                                    do {
                                        let statistics = try await driver.waitOutgoingMigration(name: name, job: job)
                                        continuation.yield(.event(.streamCompleted(statistics)))
                                    } catch {
                                        continuation.yield(.event(Self.isDead(driver, name) ? .qemuExited : .operationFailed(Self.migrationError(error))))
                                    }
                                }
                            } catch {
                                continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                            }
                        case .cancelMigration:
                            await driver.cancelOutgoingMigration(name: name)
                        case .resumeGuest:
                            do {
                                try await driver.resumeAfterMigration(name: name)
                            } catch {
                                logger.error("migration: cannot resume the guest", metadata: ["domain": "\(name)", "error": "\(error)"])
                            }
                        case .stopQEMU:
                            await driver.stopMigratedQEMU(name: name)
                        case .markMigrated(let undefine):
                            driver.markMigrated(name: name, undefine: undefine)
                        case .queryDestination:
                            let version = machine.version ?? .current
                            let identity = MigrationMessage.DomainIdentity(name: name, uuid: domain.migratable.uuid ?? "")
                            let destination = request.destination
                            let tls = self.tls
                            group.addTask {
                                let answer = await Self.query(destination, tls: tls, version: version, domain: identity, logger: logger)
                                continuation.yield(.event(answer.map { .received($0) } ?? .timedOut))
                            }
                        }
                    }
                    if machine.phase == .completed || machine.phase == .failed { break }
                    let phase = machine.phase
                    var event: MigrationSource.Event?
                    while event == nil {
                        guard let input = await iterator.next() else { event = .peerLost; break }
                        switch input {
                        case .event(.streamCompleted(var statistics?)):
                            if let streamIssued {
                                let paused = Self.stamp(&statistics, issued: streamIssued)
                                if guestStopped == nil { guestStopped = paused }
                            }
                            event = .streamCompleted(statistics)
                        case .event(.received(let message)):
                            if case .finishReply(let reply) = message.body, reply.running, let guestStopped {
                                measuredDowntime = Self.milliseconds(ContinuousClock.now - guestStopped)
                            }
                            event = .received(message)
                        case .event(let received):
                            event = received
                        case .tick:
                            switch machine.awaiting {
                            case .message, .local:
                                if ContinuousClock.now - since > Self.stepDeadline { event = .timedOut }
                            case .resolution:
                                // The destination did not answer for long: stop waiting here;
                                // the guest stays paused until an operator decides.
                                if ContinuousClock.now - since > .seconds(300) { break machineLoop }
                            case .stream, .nothing:
                                break
                            }
                        }
                    }
                    guard let event else { break }
                    actions = machine.handle(event)
                    if machine.phase != phase { since = .now }
                }
                group.cancelAll()
            }
        }
        continuation.finish()
        removeRecord(name)
        if machine.phase != .completed && machine.phase != .failed {
            // The channel ended the loop: settle by the machine's own rules.
            for action in machine.handle(.peerLost) {
                if case .resumeGuest = action { try? await driver.resumeAfterMigration(name: name) }
                if case .cancelMigration = action { await driver.cancelOutgoingMigration(name: name) }
            }
        }
        if streamTLS != nil {
            // A guest that stays here keeps no credentials for a later, plain migration.
            await driver.disableMigrationTLS(name: name)
        }
        Self.logPhase(logger, name: name, role: "source", phase: "settled", since: began)
        return Result(machine: machine, aborted: job.aborted, measuredDowntime: machine.phase == .completed ? measuredDowntime : nil)
    }

    /// Fills libvirt's job timestamps of a completed stream (`started`: `migrate` sent;
    /// `stopped`: QEMU paused the guest, `total-time − downtime` later; `sent`: now; ms since
    /// the epoch) and returns when the guest was paused on the monotonic clock.
    static func stamp(_ statistics: inout MigrationStatistics, issued: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        let now = ContinuousClock.now
        var wall = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        let wallNow = UInt64(wall.tv_sec) * 1000 + UInt64(wall.tv_nsec / 1_000_000)
        let started = wallNow - min(wallNow, milliseconds(now - issued))
        statistics.started = started
        statistics.sent = wallNow
        guard let downtime = statistics.downtime, downtime <= statistics.timeElapsed else { return nil }
        statistics.stopped = started + statistics.timeElapsed - downtime
        return issued + .milliseconds(Int64(statistics.timeElapsed - downtime))
    }

    /// A debug line per phase with the milliseconds since the migration began: where the
    /// control plane spends its time.
    static func logPhase(_ logger: Logger, name: String, role: String, phase: String, since began: ContinuousClock.Instant) {
        guard logger.logLevel <= .debug else { return }
        var wall = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        logger.debug("migration phase", metadata: [
            "domain": "\(name)", "role": "\(role)", "phase": "\(phase)", "ms": "\(milliseconds(ContinuousClock.now - began))",
            "wall": "\(wall.tv_sec).\(String(wall.tv_nsec / 1_000_000 + 1000).dropFirst())",
        ])
    }

    static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    /// Asks the destination what it holds of `domain` on a new channel, retrying for a while.
    private static func query(_ destination: PeerEndpoint, tls: PeerTLS?, version: MigrationProtocolVersion,
                              domain: MigrationMessage.DomainIdentity, logger: Logger, attempts: Int = 60) async -> MigrationMessage? {
        for attempt in 0..<attempts {
            if attempt > 0 { try? await Task.sleep(for: .seconds(1)) }
            do {
                let connection = try await PeerChannel.connect(to: destination, tls: tls)
                let reply: MigrationMessage? = try await connection.executeThenClose { inbound, outbound in
                    try await outbound.write(PeerChannel.frame(MigrationMessage(version, .query(domain))))
                    var decoder = MigrationFrame.Decoder()
                    for try await buffer in inbound {
                        decoder.append(buffer.readableBytesView)
                        if let message = try decoder.next() { return message }
                    }
                    return nil
                }
                if let reply { return reply }
            } catch {
                logger.info("migration: the destination does not answer yet", metadata: ["domain": "\(domain.name)", "error": "\(error)"])
            }
        }
        return nil
    }

    // MARK: helpers

    /// Reads frames until the channel ends; `deliver(nil)` once at the end.
    static func readFrames(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>, _ deliver: @Sendable (MigrationMessage?) -> Void) async {
        var decoder = MigrationFrame.Decoder()
        do {
            for try await buffer in inbound {
                decoder.append(buffer.readableBytesView)
                while let message = try decoder.next() {
                    deliver(message)
                }
            }
        } catch {
            // A broken channel or a malformed frame: the peer is gone either way.
        }
        deliver(nil)
    }

    static func isDead(_ driver: Driver, _ name: String) -> Bool {
        guard let status = try? driver.store.status(name) else { return true }
        return !QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).isAlive
    }

    /// A driver error in the protocol's terms.
    static func migrationError(_ error: any Error) -> MigrationError {
        if let error = error as? MigrationError { return error }
        if let error = error as? QEMUError {
            switch error.code {
            case .incompatibleCPU:
                let problems = error.features.map { CPUVerdict.Problem(feature: $0, reason: "differs from the source's") }
                return MigrationError(.incompatibleCPU, error.message, verdict: CPUVerdict(missing: problems))
            case .timeout: return MigrationError(.timeout, error.message)
            case .processExited: return MigrationError(.processExited, error.message)
            case .aborted: return MigrationError(.aborted, error.message)
            case .invalidArgument, .alreadyExists: return MigrationError(.invalidArgument, error.message)
            case .unsupported: return MigrationError(.unsupported, error.message)
            case .invalidState: return MigrationError(.invalidState, error.message)
            default: return MigrationError(.operationFailed, error.message)
            }
        }
        return MigrationError(.operationFailed, "\(error)")
    }

    struct Record: Codable {
        var role: String
        var phase: String
        var version: Int?
        var uri: String?
        /// The source: the destination's address; the destination: the source's host name.
        var peer: String
        var pid: Int32
        var uuid: String?
        /// Whether the guest ran when the migration began (the source resumes only then).
        var running: Bool?
        var undefine: Bool?
        /// The source: the destination owns the guest (phase `completed` after the switch-over;
        /// not a dry run); what is left is to stop the QEMU here and mark the domain migrated.
        var migrated: Bool?
    }

    /// Persists the machine's phase before its actions are performed.
    func persist(name: String, role: String, phase: String, version: MigrationProtocolVersion?, uri: String?, peer: String,
                         uuid: String? = nil, running: Bool? = nil, undefine: Bool? = nil, migrated: Bool? = nil) {
        let record = Record(role: role, phase: phase, version: version?.rawValue, uri: uri, peer: peer, pid: getpid(),
                            uuid: uuid, running: running, undefine: undefine, migrated: migrated)
        guard let data = try? JSONEncoder().encode(record) else { return }
        let path = recordPath(name)
        let bytes = [UInt8](data)
        // The same record again (an event that did not change the phase): already there.
        guard lastRecord.withLockedValue({ $0[name] != bytes }) else { return }
        // Not durable: the record matters only to a keeld restarted while the QEMUs still run (a
        // power loss ends them too); the rename keeps it whole for that reader. An fsync per
        // phase cost milliseconds each on the way from the source's pause to the destination's
        // resume.
        if (try? POSIXFile.writeAtomically(path, String(decoding: bytes, as: UTF8.self), durable: false)) != nil {
            lastRecord.withLockedValue { $0[name] = bytes }
        }
    }

    /// Test-only, and only with `keeld --test-hold ROLE:PHASE`: once the machine of `role` has
    /// entered `phase` and persisted it, before its actions are performed, writes
    /// `STATE/run/NAME.hold` and waits while that file exists (at most 10 minutes), so that a
    /// test can kill a process or cut the link at exactly that point and then release it by
    /// removing the file. Without the option (production) it returns at once.
    func hold(name: String, role: String, phase: String) async {
        let point = "\(role):\(phase)"
        guard holds.contains(point) else { return }
        let path = holder.stateDirectory + "/run/\(name).hold"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let bytes = Array((point + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        logger.warning("migration held for a test", metadata: ["domain": "\(name)", "at": "\(point)"])
        let limit = ContinuousClock.now + .seconds(600)
        while access(path, F_OK) == 0, ContinuousClock.now < limit {
            try? await Task.sleep(for: .milliseconds(20))
        }
        unlink(path)
        logger.warning("migration released by the test", metadata: ["domain": "\(name)", "at": "\(point)"])
    }

    func recordPath(_ name: String) -> String { holder.stateDirectory + "/run/\(name).migration.json" }

    func removeRecord(_ name: String) {
        lastRecord.withLockedValue { _ = $0.removeValue(forKey: name) }
        unlink(recordPath(name))
    }

    /// The record of an interrupted migration of `name` left by another (dead) process.
    func interruptedRecord(_ name: String) -> Record? {
        guard let bytes = try? readAll(recordPath(name)), let record = try? JSONDecoder().decode(Record.self, from: Data(bytes)),
              record.pid != getpid(), kill(record.pid, 0) != 0
        else { return nil }
        return record
    }

    /// Settles migrations a previous `keeld` left behind (after the driver's job recovery,
    /// which cancelled streams that had not completed and stopped uncommitted incoming QEMUs).
    ///
    /// A source that had its `finish-reply` (phase `completed` after the switch-over) stops its
    /// QEMU and marks the domain migrated, as its machine would have. A source that had sent
    /// `finish` (phases `finishing`, `outcomeUnknown`) does not know who holds the guest: it keeps the guest paused and asks the destination — `running` or
    /// `paused` there: stop here and mark migrated; `absent`: resume here; no answer: leave it
    /// paused and say so. Never a blind resume.
    func resolveInterrupted() async {
        let driver = self.driver
        for file in (try? Self.list(holder.stateDirectory + "/run")) ?? [] where file.hasSuffix(".migration.json") {
            let name = String(file.dropLast(".migration.json".count))
            guard let record = interruptedRecord(name) else { continue }
            defer { removeRecord(name) }
            if record.role == "destination", record.phase == "committing" || record.phase == "resuming",
               driver.migrationPresence(name: name) == .paused {
                // The takeover was committed (job recovery left the guest alone): finish it, as
                // the destination's machine would have.
                if record.running ?? false {
                    try? await driver.resumeAfterMigration(name: name)
                }
                logger.notice("an interrupted incoming migration completed", metadata: ["domain": "\(name)", "resumed": "\(record.running ?? false)"])
                continue
            }
            if record.role == "source", record.phase == "completed", record.migrated ?? false {
                // The destination had answered `finish`: it owns the guest. The paused copy here
                // must never run again; finish what the machine had begun.
                await driver.stopMigratedQEMU(name: name)
                driver.markMigrated(name: name, undefine: record.undefine ?? false)
                logger.notice("an interrupted migration completed: the destination holds the guest", metadata: ["domain": "\(name)"])
                continue
            }
            guard record.role == "source", record.phase == "finishing" || record.phase == "outcomeUnknown" else {
                logger.notice("an interrupted migration was settled by job recovery", metadata: [
                    "domain": "\(name)", "role": "\(record.role)", "phase": "\(record.phase)",
                ])
                continue
            }
            guard driver.migrationPresence(name: name) != .absent else {
                logger.warning("an interrupted migration: the source QEMU is gone", metadata: ["domain": "\(name)"])
                continue
            }
            logger.warning("an interrupted migration: the guest stays paused until the destination says who holds it", metadata: [
                "domain": "\(name)", "phase": "\(record.phase)", "destination": "\(record.peer)",
            ])
            var answer: MigrationMessage.DomainPresence?
            if let destination = try? PeerEndpoint(parsing: record.peer) {
                let identity = MigrationMessage.DomainIdentity(name: name, uuid: record.uuid ?? "")
                let version = record.version.map { MigrationProtocolVersion(rawValue: $0) } ?? .current
                for _ in 0..<10 {
                    guard let reply = await Self.query(destination, tls: tls, version: version, domain: identity, logger: logger, attempts: 5),
                          case .queryReply(let presence) = reply.body
                    else { break }
                    if presence != .incoming {
                        answer = presence
                        break
                    }
                    // The destination is still taking over by itself; ask again.
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            switch answer {
            case .running?, .paused?:
                await driver.stopMigratedQEMU(name: name)
                driver.markMigrated(name: name, undefine: record.undefine ?? false)
                logger.notice("an interrupted migration completed: the destination holds the guest", metadata: ["domain": "\(name)"])
            case .absent?:
                if record.running ?? true {
                    try? await driver.resumeAfterMigration(name: name)
                }
                logger.notice("an interrupted migration failed: the guest stays here", metadata: ["domain": "\(name)"])
            case .incoming?, nil:
                logger.error("an interrupted migration: the destination did not say who holds the guest; it stays paused here", metadata: [
                    "domain": "\(name)", "destination": "\(record.peer)",
                ])
            }
        }
    }

    private static func list(_ directory: String) throws -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    private func readAll(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw QEMUError(.notFound, path) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &chunk, chunk.count)
            if count <= 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Listens for peers and serves each connection (`keeld --listen`).
struct PeerListenerService: Service {
    let service: MigrationService
    let endpoint: PeerEndpoint

    func run() async throws {
        let server = try await PeerChannel.listen(on: endpoint, tls: service.tls)
        service.logger.info("listening for peers", metadata: ["address": "\(endpoint)"])
        if endpoint.scheme == .tcp {
            service.logger.warning("the peer channel is plaintext (--insecure): anyone who reaches \(endpoint) can migrate guests here")
        }
        try await withGracefulShutdownHandler {
            try await server.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        group.addTask { await service.serve(connection) }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }
}
