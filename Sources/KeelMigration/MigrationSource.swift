import KeelCPU
import KeelDomain

/// The source side of a migration as a pure state machine: events in (messages from the
/// destination, results of local steps, failures, timeouts), actions out (messages to send,
/// steps on the local QEMU and definitions). It holds no sockets, processes or clocks.
///
/// The safety rules it encodes:
/// - Before the switch-over (the destination's `finish-reply`), any failure leaves the guest on
///   the source: the migration is cancelled, the guest resumed if it ran before (QEMU pauses it
///   when the stream completes; an offline migration pauses it first), and the destination is
///   told with `abort`, after which it holds nothing.
/// - After `finish-reply` the destination owns the guest: the source's QEMU is stopped and its
///   definition marked migrated (or undefined).
/// - Between the stream's completion and the answer to `finish`, a lost peer makes the outcome
///   unknown: the guest stays paused on the source, and only the destination's word (a
///   `query-reply` or an operator's `destinationResolved`) ends that state — never a blind resume.
///
/// The transport must persist the machine (its phase at least) before performing the actions of
/// a transition, so that a restarted `keeld` feeds `.daemonRestarted` to the machine it had.
public struct MigrationSource: Sendable {
    /// What the driver knows of the domain at Begin.
    public struct Domain: Sendable, Hashable {
        /// The live definition with the original CPU swapped in (libvirt's migratable XML).
        public var migratable: DomainDefinition
        /// The updated CPU in libvirt's vocabulary (`check='full'`) for the cookie's `<cpu>`.
        public var updatedCPU: CPUDefinition?
        /// Keel's ABI record of the guest (effective CPU, CPUID words, QEMU, host).
        public var abiRecord: ABIRecord?
        /// The persistent definition to send with `--persistent` (the live one when transient).
        public var persistent: DomainDefinition?
        /// Whether the guest runs (else the user paused it).
        public var running: Bool

        public init(migratable: DomainDefinition, updatedCPU: CPUDefinition?, abiRecord: ABIRecord?,
                    persistent: DomainDefinition? = nil, running: Bool) {
            self.migratable = migratable
            self.updatedCPU = updatedCPU
            self.abiRecord = abiRecord
            self.persistent = persistent
            self.running = running
        }
    }

    /// QEMU's stream parameters; they stay on the source.
    public struct StreamParameters: Sendable, Hashable {
        public var maxDowntimeMilliseconds: UInt64?
        public var bandwidthMiBps: UInt64?
        public var tls: Bool

        public init(maxDowntimeMilliseconds: UInt64? = nil, bandwidthMiBps: UInt64? = nil, tls: Bool = false) {
            self.maxDowntimeMilliseconds = maxDowntimeMilliseconds
            self.bandwidthMiBps = bandwidthMiBps
            self.tls = tls
        }
    }

    public struct Request: Sendable, Hashable {
        public var domain: Domain
        /// This host.
        public var host: MigrationMessage.HostIdentity
        public var options: MigrationOptions
        /// Remove the source's definition once the destination owns the guest.
        public var undefineSource: Bool
        public var stream: StreamParameters
        /// The protocol versions offered, highest first.
        public var versions: [MigrationProtocolVersion]

        public init(domain: Domain, host: MigrationMessage.HostIdentity, options: MigrationOptions = MigrationOptions(),
                    undefineSource: Bool = false, stream: StreamParameters = StreamParameters(),
                    versions: [MigrationProtocolVersion] = MigrationProtocolVersion.supported) {
            self.domain = domain
            self.host = host
            self.options = options
            self.undefineSource = undefineSource
            self.stream = stream
            self.versions = versions
        }
    }

    public enum Phase: String, Sendable, Hashable, CaseIterable {
        case idle
        /// `begin` sent; waiting for the version.
        case negotiating
        /// `prepare` sent; the destination decides and starts its QEMU.
        case preparing
        /// Offline migration: pausing the guest before the stream.
        case pausing
        /// QEMU's stream runs; `perform` sent.
        case migrating
        /// The stream completed (the guest is paused here); `finish` sent.
        case finishing
        /// The peer was lost while finishing: the guest stays paused here until the destination
        /// says whether it holds it.
        case outcomeUnknown
        case completed
        case failed
    }

    public enum Event: Sendable, Hashable {
        case start
        case received(MigrationMessage)
        /// `.pauseGuest` done.
        case guestPaused
        /// QEMU reports the migration completed; it paused the guest.
        case streamCompleted(MigrationStatistics?)
        /// The last local step failed (pause, migrate …).
        case operationFailed(MigrationError)
        /// The source's QEMU exited.
        case qemuExited
        /// The channel to the destination closed or broke.
        case peerLost
        /// What the machine waits for (`awaiting`) did not come in time.
        case timedOut
        /// The user aborted the job (`domjobabort`).
        case abortRequested
        /// An operator (or a query on another path) says whether the destination holds the
        /// guest; ends `outcomeUnknown`.
        case destinationResolved(ownsGuest: Bool)
        /// `keeld` restarted with this machine as persisted; the channel is gone.
        case daemonRestarted
    }

    public enum Action: Sendable, Hashable {
        case send(MigrationMessage)
        /// Tell the user (job record, events, CLI).
        case warn(String)
        case pauseGuest
        /// QMP `migrate` to the destination's URI with these parameters.
        case startMigration(uri: String, StreamParameters)
        /// QMP `migrate_cancel` (harmless when nothing runs).
        case cancelMigration
        /// Make the guest run (`cont` when paused).
        case resumeGuest
        /// Stop the source's QEMU: the destination owns the guest.
        case stopQEMU
        /// Mark the domain shut off (reason migrated), or undefine it.
        case markMigrated(undefine: Bool)
        /// Reach the destination (a new channel if needed) and send `query`.
        case queryDestination
    }

    public enum Outcome: Sendable, Hashable {
        /// The destination owns the guest (running or paused there).
        case migrated(runningOnDestination: Bool)
        /// Dry run: the destination can reproduce the guest CPU.
        case accepted(CPUVerdict?)
    }

    /// What the machine waits for, so that the transport can bound it with a deadline.
    public enum Awaiting: Sendable, Hashable {
        case message(String)
        case local(String)
        /// QEMU's stream; its length depends on the guest.
        case stream
        /// The destination's word on who holds the guest.
        case resolution
        case nothing
    }

    public let request: Request
    public private(set) var phase: Phase = .idle
    public private(set) var version: MigrationProtocolVersion?
    public private(set) var destination: MigrationMessage.HostIdentity?
    public private(set) var outcome: Outcome?
    /// Why the migration failed, or why its outcome is unknown.
    public private(set) var error: MigrationError?
    public private(set) var warnings: [String] = []
    public private(set) var statistics: MigrationStatistics?
    /// Whether the source's QEMU is alive.
    public private(set) var qemuAlive = true
    /// Where the destination's QEMU listens, from `prepare-reply`.
    public private(set) var streamURI: String?
    /// Whether the guest may have been paused by the migration (offline pause or QEMU's pause
    /// at completion), so that a failure resumes it.
    private var mayHavePaused = false

    public init(request: Request) {
        self.request = request
    }

    public var awaiting: Awaiting {
        switch phase {
        case .idle, .completed, .failed: .nothing
        case .negotiating: .message("begin-reply")
        case .preparing: .message("prepare-reply")
        case .pausing: .local("guestPaused")
        case .migrating: .stream
        case .finishing: .message("finish-reply")
        case .outcomeUnknown: .resolution
        }
    }

    /// Where the guest is, as far as the source knows.
    public var guest: GuestPlace {
        switch phase {
        case .completed:
            if case .migrated = outcome { return .destination }
            return qemuAlive ? (request.domain.running ? .runningHere : .pausedHere) : .lost
        case .finishing, .outcomeUnknown:
            return qemuAlive ? .pausedHereOutcomeUnknown : .lostHereOutcomeUnknown
        default:
            guard qemuAlive else { return .lost }
            return request.domain.running ? .runningHere : .pausedHere
        }
    }

    /// Where the source believes the guest is.
    public enum GuestPlace: String, Sendable, Hashable {
        case runningHere, pausedHere
        /// Paused here by the migration; the destination may hold it.
        case pausedHereOutcomeUnknown
        /// The source's QEMU is gone; the destination may hold the guest.
        case lostHereOutcomeUnknown
        case destination
        /// The source's QEMU died before the switch-over.
        case lost
    }

    /// Feeds one event and returns the actions to perform, in order.
    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .start:
            return start()
        case .received(let message):
            return receive(message)
        case .guestPaused:
            guard phase == .pausing else { return [] }
            return startStream()
        case .streamCompleted(let statistics):
            guard phase == .migrating else { return [] }
            return streamCompleted(statistics)
        case .operationFailed(let error):
            switch phase {
            case .pausing, .migrating:
                return failBeforeSwitchOver(error, notify: true)
            default:
                return []
            }
        case .qemuExited:
            let wasAlive = qemuAlive
            qemuAlive = false
            switch phase {
            case .negotiating, .preparing, .pausing, .migrating:
                guard wasAlive else { return [] }
                return failBeforeSwitchOver(MigrationError(.processExited, "the source QEMU exited during the migration; the guest is lost"), notify: true)
            default:
                // After the stream completed the destination has the whole guest; it may still
                // take it over.
                return []
            }
        case .peerLost:
            return peerGone(MigrationError(.peerLost, "the connection to the destination was lost"), notify: false)
        case .timedOut:
            // The channel may still work: a destination that is only slow is told to stop.
            return peerGone(MigrationError(.timeout, "the migration timed out while \(phase.rawValue)"), notify: true)
        case .abortRequested:
            switch phase {
            case .negotiating, .preparing, .pausing, .migrating:
                return failBeforeSwitchOver(MigrationError(.aborted, "the migration was aborted"), notify: true)
            case .finishing, .outcomeUnknown:
                return [warn("the migration cannot be aborted any more: the stream completed and the destination may own the guest")]
            default:
                return []
            }
        case .destinationResolved(let owns):
            guard phase == .outcomeUnknown || phase == .finishing else { return [] }
            return owns ? switchedOver(runningOnDestination: true) : keepOnSource(error ?? MigrationError(.operationFailed, "the destination does not hold the guest"))
        case .daemonRestarted:
            return restarted()
        }
    }

    // MARK: transitions

    private mutating func start() -> [Action] {
        guard phase == .idle else { return [] }
        let domain = request.domain.migratable
        guard let uuid = domain.uuid else {
            return fail(MigrationError(.invalidArgument, "domain '\(domain.name)' has no UUID"))
        }
        guard let highest = request.versions.max() else {
            return fail(MigrationError(.invalidArgument, "no migration protocol version to offer"))
        }
        phase = .negotiating
        return [.send(MigrationMessage(highest, .begin(.init(
            versions: request.versions, domain: .init(name: domain.name, uuid: uuid), host: request.host
        ))))]
    }

    private mutating func receive(_ message: MigrationMessage) -> [Action] {
        if case .abort(let error) = message.body {
            return destinationAborted(error)
        }
        switch (phase, message.body) {
        case (.negotiating, .beginReply(let reply)):
            return negotiated(message.version, reply)
        case (.preparing, .prepareReply(let reply)) where message.version == version:
            return prepared(reply)
        case (.finishing, .finishReply(let reply)) where message.version == version,
             (.outcomeUnknown, .finishReply(let reply)) where message.version == version:
            return finished(reply)
        case (.outcomeUnknown, .queryReply(let presence)), (.finishing, .queryReply(let presence)):
            switch presence {
            case .running, .paused:
                return switchedOver(runningOnDestination: presence == .running)
            case .absent:
                return keepOnSource(error ?? MigrationError(.operationFailed, "the destination does not hold the guest"))
            case .incoming:
                // Not taken over yet: tell it to stop, and ask again.
                return [.send(MigrationMessage(version ?? .current, .abort(MigrationError(.aborted, "the source keeps the guest")))), .queryDestination]
            }
        case (.completed, _), (.failed, _):
            return []
        default:
            let error = MigrationError(.protocolViolation, "unexpected migration message '\(message.type)' (protocol \(message.version)) while \(phase.rawValue)")
            return peerMisbehaved(error)
        }
    }

    private mutating func negotiated(_ chosen: MigrationProtocolVersion, _ reply: MigrationMessage.BeginReply) -> [Action] {
        guard request.versions.contains(chosen), reply.versions.contains(chosen) else {
            return failBeforeSwitchOver(MigrationError(.protocolViolation, "the destination chose migration protocol \(chosen), which was not offered"), notify: true)
        }
        if MigrationCookie.normalizedUUID(reply.host.uuid) == MigrationCookie.normalizedUUID(request.host.uuid) {
            return failBeforeSwitchOver(MigrationError(.invalidArgument, "Attempt to migrate guest to the same host \(reply.host.uuid)"), notify: true)
        }
        if request.options.tlsStream && !chosen.carriesTLSStream {
            return failBeforeSwitchOver(MigrationError(.unsupported, "the destination \(reply.host.name) speaks migration protocol \(chosen), which cannot carry the stream over TLS: refusing --tls-stream rather than sending the guest in plaintext"), notify: true)
        }
        version = chosen
        destination = reply.host
        var actions: [Action] = []
        if !chosen.carriesGuestCPU {
            actions.append(warn("the destination \(reply.host.name) speaks migration protocol \(chosen): it starts the domain XML's original CPU and updates it live, as libvirt did before 2017; the guest CPU cannot be verified there"))
        }
        let domain = request.domain
        var cookie = MigrationCookie(name: domain.migratable.name, uuid: domain.migratable.uuid ?? "",
                                     hostname: request.host.name, hostUUID: request.host.uuid)
        if chosen.carriesGuestCPU {
            cookie.cpu = domain.updatedCPU
            cookie.abiRecord = domain.abiRecord
        }
        phase = .preparing
        actions.append(.send(MigrationMessage(chosen, .prepare(.init(
            xml: domain.migratable.formatted(), cookie: cookie.formatted(), options: request.options
        )))))
        return actions
    }

    private mutating func prepared(_ reply: MigrationMessage.PrepareReply) -> [Action] {
        do {
            let cookie = try MigrationCookie(xmlString: reply.cookie)
            try cookie.check(phase: .prepare, name: request.domain.migratable.name,
                             uuid: request.domain.migratable.uuid ?? "", localHostUUID: request.host.uuid)
        } catch let error as MigrationError {
            return failBeforeSwitchOver(error, notify: true)
        } catch {
            return failBeforeSwitchOver(MigrationError(.invalidCookie, "\(error)"), notify: true)
        }
        if request.options.dryRun {
            phase = .completed
            outcome = .accepted(reply.verdict)
            return []
        }
        guard let uri = reply.uri else {
            return failBeforeSwitchOver(MigrationError(.protocolViolation, "the destination sent no URI for the stream"), notify: true)
        }
        if request.options.tlsStream && !reply.tlsStream {
            return failBeforeSwitchOver(MigrationError(.unsupported, "the destination did not set up TLS for the stream (an older keeld?): refusing --tls-stream rather than sending the guest in plaintext"), notify: true)
        }
        streamURI = uri
        if !request.options.live && request.domain.running {
            phase = .pausing
            mayHavePaused = true
            return [.pauseGuest]
        }
        return startStream()
    }

    private mutating func startStream() -> [Action] {
        guard let version, let uri = streamURI else { return [] }
        phase = .migrating
        // QEMU pauses the guest when the stream completes, which may race a failure report.
        mayHavePaused = true
        return [.startMigration(uri: uri, request.stream), .send(MigrationMessage(version, .perform))]
    }

    private mutating func streamCompleted(_ statistics: MigrationStatistics?) -> [Action] {
        guard let version else { return [] }
        self.statistics = statistics
        let domain = request.domain
        var cookie = MigrationCookie(name: domain.migratable.name, uuid: domain.migratable.uuid ?? "",
                                     hostname: request.host.name, hostUUID: request.host.uuid)
        cookie.statistics = statistics
        if request.options.persistent {
            cookie.persistent = domain.persistent ?? domain.migratable
            cookie.mandatory.insert(.persistent)
        }
        phase = .finishing
        return [.send(MigrationMessage(version, .finish(.init(
            cookie: cookie.formatted(), resume: domain.running && !request.options.paused
        ))))]
    }

    private mutating func finished(_ reply: MigrationMessage.FinishReply) -> [Action] {
        var actions: [Action] = []
        do {
            let cookie = try MigrationCookie(xmlString: reply.cookie)
            try cookie.check(phase: .finish, name: request.domain.migratable.name,
                             uuid: request.domain.migratable.uuid ?? "", localHostUUID: request.host.uuid)
            if let statistics = cookie.statistics { self.statistics = statistics }
        } catch {
            // The destination owns the guest whatever its cookie says; the cookie only informs.
            actions.append(warn("the destination's finish cookie is unusable: \(error)"))
        }
        return actions + switchedOver(runningOnDestination: reply.running)
    }

    /// The destination owns the guest: stop here, mark the definition, tell the destination.
    private mutating func switchedOver(runningOnDestination: Bool) -> [Action] {
        phase = .completed
        outcome = .migrated(runningOnDestination: runningOnDestination)
        error = nil
        var actions: [Action] = [.stopQEMU, .markMigrated(undefine: request.undefineSource)]
        if let version {
            actions.append(.send(MigrationMessage(version, .confirm)))
        }
        return actions
    }

    /// The destination holds nothing: the guest stays here, resumed if it ran.
    private mutating func keepOnSource(_ error: MigrationError) -> [Action] {
        phase = .failed
        self.error = error
        return resumeIfNeeded()
    }

    private func resumeIfNeeded() -> [Action] {
        mayHavePaused && request.domain.running && qemuAlive ? [.resumeGuest] : []
    }

    private mutating func destinationAborted(_ error: MigrationError) -> [Action] {
        switch phase {
        case .negotiating, .preparing, .pausing, .migrating:
            return failBeforeSwitchOver(error, notify: false)
        case .finishing, .outcomeUnknown:
            // An abort from the destination means it killed its QEMU: the guest is only here.
            return keepOnSource(error)
        default:
            return []
        }
    }

    private mutating func peerGone(_ error: MigrationError, notify: Bool) -> [Action] {
        switch phase {
        case .negotiating, .preparing, .pausing, .migrating:
            // The destination never resumes without `finish`, which was not sent.
            return failBeforeSwitchOver(error, notify: notify)
        case .finishing, .outcomeUnknown:
            phase = .outcomeUnknown
            if self.error == nil { self.error = error }
            return [.queryDestination]
        default:
            return []
        }
    }

    private mutating func peerMisbehaved(_ error: MigrationError) -> [Action] {
        switch phase {
        case .finishing, .outcomeUnknown:
            // Whether the destination took the guest over is unknown: ask, never resume blindly.
            phase = .outcomeUnknown
            if self.error == nil { self.error = error }
            return [.queryDestination]
        default:
            return failBeforeSwitchOver(error, notify: true)
        }
    }

    /// Any failure before `finish` was sent: cancel, resume, tell the destination.
    private mutating func failBeforeSwitchOver(_ error: MigrationError, notify: Bool) -> [Action] {
        var actions: [Action] = []
        if phase == .migrating { actions.append(.cancelMigration) }
        actions += resumeIfNeeded()
        if notify, let version = version ?? request.versions.max() {
            actions.append(.send(MigrationMessage(version, .abort(error))))
        }
        phase = .failed
        self.error = error
        return actions
    }

    private mutating func fail(_ error: MigrationError) -> [Action] {
        phase = .failed
        self.error = error
        return []
    }

    /// Records a warning and returns the action that reports it.
    private mutating func warn(_ text: String) -> Action {
        warnings.append(text)
        return .warn(text)
    }

    private mutating func restarted() -> [Action] {
        let error = MigrationError(.peerLost, "keeld restarted during the migration")
        switch phase {
        case .idle:
            return []
        case .negotiating, .preparing, .pausing, .migrating:
            // QEMU's stream outlives keeld; cancel it. `finish` was never sent (it is sent only
            // after the phase `finishing` was persisted), so the destination will not resume.
            var actions: [Action] = phase == .pausing || phase == .migrating ? [.cancelMigration] : []
            phase = .failed
            self.error = error
            actions += resumeIfNeeded()
            return actions
        case .finishing, .outcomeUnknown:
            phase = .outcomeUnknown
            if self.error == nil { self.error = error }
            return [.queryDestination]
        case .completed:
            // Settle again; both steps are idempotent.
            if case .migrated = outcome { return [.stopQEMU, .markMigrated(undefine: request.undefineSource)] }
            return []
        case .failed:
            return resumeIfNeeded()
        }
    }
}
