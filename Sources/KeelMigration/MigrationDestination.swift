import KeelCPU
import KeelDomain

/// The destination side of a migration as a pure state machine.
///
/// The destination decides first: in Prepare it checks the cookie (mandatory features, identity)
/// and has the driver judge the incoming CPU against this host's capabilities and ceiling
/// (`.decideCPU`, answered by `.cpuDecided` with the verdict restore uses) and refuses, naming
/// each feature with its CPUID bits, before any QEMU starts. Only then does it start QEMU with
/// `-incoming` and the CPU pinned completely, verify the live CPU, and open the stream.
///
/// The safety rules it encodes:
/// - It never resumes the guest without the source's `finish`, which the source sends only once
///   QEMU's stream completed. A lost peer, a timeout, an `abort` or any local failure before
///   `finish` kills its QEMU and drops what Prepare created, and says so with `abort`.
/// - Once it has `finish`, it completes the takeover by itself (a lost peer does not stop it: the
///   source keeps the guest paused until it learns the outcome) or, failing, kills its QEMU and
///   says `abort`, after which the source resumes.
/// - `finish-reply` is sent only after the definition is committed and the guest resumed: from
///   then on this host owns the guest.
public struct MigrationDestination: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// This host.
        public var host: MigrationMessage.HostIdentity
        /// The protocol versions spoken, highest first.
        public var versions: [MigrationProtocolVersion]
        /// Whether this host has the TLS material to accept QEMU's stream over TLS.
        public var tlsStream: Bool

        public init(host: MigrationMessage.HostIdentity, versions: [MigrationProtocolVersion] = MigrationProtocolVersion.supported,
                    tlsStream: Bool = false) {
            self.host = host
            self.versions = versions
            self.tlsStream = tlsStream
        }
    }

    /// How the live CPU is checked once QEMU started.
    public enum CPUCheck: Sendable, Hashable {
        /// QEMU was started with this CPU pinned completely; the live CPU must equal it
        /// (`check='full'`).
        case equal(CPUDefinition)
        /// No side channel (protocol 1, or a guest without CPU data): the XML's original CPU
        /// is started and updated live, as on a fresh start.
        case updateLive(CPUDefinition?)
    }

    public enum Phase: String, Sendable, Hashable, CaseIterable {
        case idle
        /// `begin-reply` sent.
        case negotiated
        /// Waiting for the driver's CPU verdict.
        case deciding
        case startingQEMU
        case checkingCPU
        /// `migrate-incoming`: waiting for the URI QEMU listens on.
        case openingStream
        /// `prepare-reply` sent; waiting for `perform` or `finish`.
        case prepared
        /// `perform` received; QEMU's stream runs.
        case receiving
        /// `finish` received; waiting for QEMU to have loaded the whole stream.
        case finishing
        /// Committing the definition: the domain becomes this host's.
        case committing
        case resuming
        case completed
        case failed
    }

    public enum Event: Sendable, Hashable {
        case received(MigrationMessage)
        /// The driver's verdict for `.decideCPU`.
        case cpuDecided(CPUVerdict)
        case qemuStarted
        case liveCPUChecked
        /// QEMU listens for the stream at `uri`.
        case listening(uri: String)
        /// QEMU loaded the whole stream (the guest is paused here).
        case incomingCompleted
        case definitionCommitted
        /// The guest runs here: the switch-over is done.
        case guestResumed
        case operationFailed(MigrationError)
        case qemuExited
        case peerLost
        case timedOut
        /// `keeld` restarted with this machine as persisted; the channel is gone.
        case daemonRestarted
    }

    public enum Action: Sendable, Hashable {
        case send(MigrationMessage)
        /// Judge the incoming CPU with the verdict restore uses (`Driver.verdict(for:capabilities:)`)
        /// and reserve the domain (not running here, no other UUID under its name); answer
        /// `.cpuDecided` or `.operationFailed`.
        case decideCPU(IncomingCPU, DomainDefinition)
        /// Start QEMU paused with `-incoming defer` for `definition` (original CPU) with the CPU
        /// `check` names, and record the domain as incoming.
        case startQEMU(DomainDefinition, CPUCheck, tlsStream: Bool)
        case checkLiveCPU(CPUCheck)
        /// `migrate-incoming` on a fresh port; answer `.listening(uri:)`.
        case acceptStream
        /// Wait until QEMU has loaded the whole stream; answer `.incomingCompleted`.
        case awaitIncomingCompletion
        /// The domain becomes this host's: transient, or persistent with `definition`.
        case commitDefinition(DomainDefinition, persistent: Bool)
        /// `cont`.
        case resumeGuest
        case killQEMU
        /// Drop what Prepare created (the incoming record, a committed definition); a definition
        /// that existed before Prepare stays as it was.
        case discardDefinition
    }

    public enum Awaiting: Sendable, Hashable {
        case message(String)
        case local(String)
        case stream
        case nothing
    }

    public let configuration: Configuration
    public private(set) var phase: Phase = .idle
    public private(set) var version: MigrationProtocolVersion?
    public private(set) var source: MigrationMessage.HostIdentity?
    public private(set) var domain: MigrationMessage.DomainIdentity?
    public private(set) var definition: DomainDefinition?
    public private(set) var incomingCPU: IncomingCPU?
    public private(set) var options = MigrationOptions()
    public private(set) var verdict: CPUVerdict?
    public private(set) var error: MigrationError?
    /// Whether the guest runs here after the takeover (else it is paused here).
    public private(set) var running = false
    /// Whether the source confirmed it stopped its QEMU.
    public private(set) var confirmed = false
    public private(set) var statistics: MigrationStatistics?
    /// Whether QEMU may exist here (a start was asked for and not undone).
    public private(set) var qemuMayExist = false
    private var peerConnected = true
    private var resume = false
    private var persistentDefinition: DomainDefinition?

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    public var awaiting: Awaiting {
        switch phase {
        case .idle: .message("begin")
        case .negotiated: .message("prepare")
        case .deciding: .local("cpuDecided")
        case .startingQEMU: .local("qemuStarted")
        case .checkingCPU: .local("liveCPUChecked")
        case .openingStream: .local("listening")
        case .prepared, .receiving: .stream
        case .finishing: .local("incomingCompleted")
        case .committing: .local("definitionCommitted")
        case .resuming: .local("guestResumed")
        case .completed, .failed: .nothing
        }
    }

    /// What this host holds of the domain (the answer to `query`).
    public var presence: MigrationMessage.DomainPresence {
        switch phase {
        case .idle, .negotiated, .deciding, .failed: .absent
        case .startingQEMU, .checkingCPU, .openingStream, .prepared, .receiving, .finishing, .committing, .resuming: .incoming
        case .completed: options.dryRun ? .absent : (running ? .running : .paused)
        }
    }

    /// Feeds one event and returns the actions to perform, in order.
    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .received(let message):
            return receive(message)
        case .cpuDecided(let verdict):
            guard phase == .deciding else { return [] }
            return decided(verdict)
        case .qemuStarted:
            guard phase == .startingQEMU, let incomingCPU else { return [] }
            phase = .checkingCPU
            return [.checkLiveCPU(Self.check(for: incomingCPU))]
        case .liveCPUChecked:
            guard phase == .checkingCPU else { return [] }
            phase = .openingStream
            return [.acceptStream]
        case .listening(let uri):
            guard phase == .openingStream, let version, let domain else { return [] }
            phase = .prepared
            return [.send(MigrationMessage(version, .prepareReply(.init(
                cookie: ownCookie(domain).formatted(), uri: uri, tlsStream: options.tlsStream && version.carriesTLSStream
            ))))]
        case .incomingCompleted:
            guard phase == .finishing, let definition else { return [] }
            phase = .committing
            return [.commitDefinition(persistentDefinition ?? definition, persistent: options.persistent)]
        case .definitionCommitted:
            guard phase == .committing else { return [] }
            if resume {
                phase = .resuming
                return [.resumeGuest]
            }
            return completed(running: false)
        case .guestResumed:
            guard phase == .resuming else { return [] }
            return completed(running: true)
        case .operationFailed(let error):
            return failLocally(error)
        case .qemuExited:
            guard qemuMayExist else { return [] }
            switch phase {
            case .completed, .failed:
                return []
            default:
                return failLocally(MigrationError(.processExited, "the destination QEMU exited during the migration"))
            }
        case .peerLost:
            peerConnected = false
            return peerGone(MigrationError(.peerLost, "the connection to the source was lost"))
        case .timedOut:
            return failLocally(MigrationError(.timeout, "the migration timed out while \(phase.rawValue)"))
        case .daemonRestarted:
            peerConnected = false
            return restarted()
        }
    }

    // MARK: transitions

    private mutating func receive(_ message: MigrationMessage) -> [Action] {
        if case .query(let identity) = message.body {
            let presence = identity == domain ? presence : .absent
            return [.send(MigrationMessage(version ?? message.version, .queryReply(presence)))]
        }
        switch (phase, message.body) {
        case (.idle, .begin(let begin)):
            return negotiate(message.version, begin)
        case (_, .abort(let error)):
            return sourceAborted(error)
        case (.negotiated, .prepare(let prepare)) where message.version == version:
            return handlePrepare(prepare)
        case (.prepared, .perform) where message.version == version:
            phase = .receiving
            return []
        case (.prepared, .finish(let finish)) where message.version == version,
             (.receiving, .finish(let finish)) where message.version == version:
            return handleFinish(finish)
        case (.completed, .confirm) where message.version == version:
            confirmed = true
            return []
        case (.completed, _), (.failed, _):
            return []
        default:
            return failLocally(MigrationError(.protocolViolation, "unexpected migration message '\(message.type)' (protocol \(message.version)) while \(phase.rawValue)"))
        }
    }

    private mutating func negotiate(_ offered: MigrationProtocolVersion, _ begin: MigrationMessage.Begin) -> [Action] {
        let ours = configuration.versions
        let reply = ours.max() ?? .current
        guard let chosen = MigrationProtocolVersion.negotiate(ours, begin.versions) else {
            let error = MigrationError(.unsupportedProtocol, "no common migration protocol: this host speaks \(ours.map(\.description).joined(separator: ", ")), the source offers \(begin.versions.map(\.description).joined(separator: ", "))")
            return refuse(error, version: reply)
        }
        if MigrationCookie.normalizedUUID(begin.host.uuid) == MigrationCookie.normalizedUUID(configuration.host.uuid) {
            return refuse(MigrationError(.invalidArgument, "Attempt to migrate guest to the same host \(begin.host.uuid)"), version: chosen)
        }
        version = chosen
        source = begin.host
        domain = begin.domain
        phase = .negotiated
        return [.send(MigrationMessage(chosen, .beginReply(.init(versions: ours, host: configuration.host))))]
    }

    private mutating func handlePrepare(_ prepare: MigrationMessage.Prepare) -> [Action] {
        guard let version, let domain else { return [] }
        options = prepare.options
        let definition: DomainDefinition
        let cookie: MigrationCookie
        do {
            definition = try DomainDefinition(xmlString: prepare.xml)
            guard definition.name == domain.name,
                  MigrationCookie.normalizedUUID(definition.uuid ?? "") == MigrationCookie.normalizedUUID(domain.uuid)
            else {
                return failLocally(MigrationError(.invalidArgument, "the domain XML names '\(definition.name)' (\(definition.uuid ?? "no uuid")), Begin announced '\(domain.name)' (\(domain.uuid))"))
            }
            cookie = try MigrationCookie(xmlString: prepare.cookie)
            try cookie.check(phase: .begin, name: definition.name, uuid: domain.uuid, localHostUUID: configuration.host.uuid)
        } catch let error as DomainError {
            return failLocally(MigrationError(.invalidArgument, "invalid domain XML: \(error.message)"))
        } catch let error as MigrationError {
            return failLocally(error)
        } catch {
            return failLocally(MigrationError(.invalidArgument, "\(error)"))
        }
        if options.tlsStream && !(configuration.tlsStream && version.carriesTLSStream) {
            // Never a plaintext stream for a guest the source wanted carried over TLS.
            return failLocally(MigrationError(.unsupported, version.carriesTLSStream
                ? "this host has no TLS identity for the migration stream (start keeld with --tls-dir DIR)"
                : "migration protocol \(version) cannot carry the stream over TLS"))
        }
        self.definition = definition
        // Protocol 1 knows neither the cookie's CPU nor the ABI record: a peer speaking it
        // starts the XML's original CPU, whatever the cookie holds.
        let incoming = IncomingCPU(
            original: definition.cpu,
            sideChannel: version.carriesGuestCPU ? cookie.cpu : nil,
            abiRecord: version.carriesGuestCPU ? cookie.abiRecord : nil
        )
        incomingCPU = incoming
        phase = .deciding
        return [.decideCPU(incoming, definition)]
    }

    private mutating func decided(_ verdict: CPUVerdict) -> [Action] {
        guard let version, let domain, let definition, let incomingCPU else { return [] }
        self.verdict = verdict
        guard verdict.restorable else {
            return failLocally(MigrationError(.incompatibleCPU, "this host cannot reproduce the guest CPU: \(verdict.message)", verdict: verdict))
        }
        if options.dryRun {
            phase = .completed
            return [.send(MigrationMessage(version, .prepareReply(.init(cookie: ownCookie(domain).formatted(), uri: nil, verdict: verdict))))]
        }
        phase = .startingQEMU
        qemuMayExist = true
        return [.startQEMU(definition, Self.check(for: incomingCPU), tlsStream: options.tlsStream)]
    }

    private mutating func handleFinish(_ finish: MigrationMessage.Finish) -> [Action] {
        guard let domain, let definition else { return [] }
        do {
            let cookie = try MigrationCookie(xmlString: finish.cookie)
            try cookie.check(phase: .perform, name: domain.name, uuid: domain.uuid, localHostUUID: configuration.host.uuid)
            statistics = cookie.statistics
            if options.persistent {
                persistentDefinition = cookie.persistent ?? definition
            }
        } catch let error as MigrationError {
            return failLocally(error)
        } catch {
            return failLocally(MigrationError(.invalidCookie, "\(error)"))
        }
        resume = finish.resume && !options.paused
        phase = .finishing
        return [.awaitIncomingCompletion]
    }

    private mutating func completed(running: Bool) -> [Action] {
        phase = .completed
        self.running = running
        guard peerConnected, let version, let domain else { return [] }
        var cookie = ownCookie(domain)
        cookie.statistics = statistics
        return [.send(MigrationMessage(version, .finishReply(.init(cookie: cookie.formatted(), running: running))))]
    }

    /// The cookie this host writes: its identity (Prepare), plus statistics (Finish).
    private func ownCookie(_ domain: MigrationMessage.DomainIdentity) -> MigrationCookie {
        MigrationCookie(name: domain.name, uuid: domain.uuid, hostname: configuration.host.name, hostUUID: configuration.host.uuid)
    }

    private static func check(for incoming: IncomingCPU) -> CPUCheck {
        if let pinned = incoming.pinned {
            var expected = pinned
            expected.check = .full
            return .equal(expected)
        }
        return .updateLive(incoming.original)
    }

    private mutating func sourceAborted(_ error: MigrationError) -> [Action] {
        switch phase {
        case .idle, .negotiated, .deciding, .startingQEMU, .checkingCPU, .openingStream, .prepared, .receiving:
            return cleanUp(error, notify: false)
        default:
            // After `finish` the takeover completes or fails by itself; the source learns which.
            return []
        }
    }

    private mutating func peerGone(_ error: MigrationError) -> [Action] {
        switch phase {
        case .idle, .negotiated, .deciding, .startingQEMU, .checkingCPU, .openingStream, .prepared, .receiving:
            return cleanUp(error, notify: false)
        default:
            return []
        }
    }

    private mutating func failLocally(_ error: MigrationError) -> [Action] {
        switch phase {
        case .completed, .failed:
            return []
        default:
            return cleanUp(error, notify: true)
        }
    }

    private mutating func refuse(_ error: MigrationError, version: MigrationProtocolVersion) -> [Action] {
        phase = .failed
        self.error = error
        return [.send(MigrationMessage(version, .abort(error)))]
    }

    /// Kills QEMU, drops what Prepare created, and tells the source unless it is gone.
    private mutating func cleanUp(_ error: MigrationError, notify: Bool) -> [Action] {
        var actions: [Action] = []
        if qemuMayExist {
            actions += [.killQEMU, .discardDefinition]
            qemuMayExist = false
        }
        if notify && peerConnected, let version = version ?? configuration.versions.max() {
            actions.append(.send(MigrationMessage(version, .abort(error))))
        }
        phase = .failed
        self.error = error
        return actions
    }

    private mutating func restarted() -> [Action] {
        switch phase {
        case .idle, .completed:
            return []
        case .failed:
            // Settle again; both steps are idempotent.
            return qemuMayExist ? [.killQEMU, .discardDefinition] : []
        case .negotiated, .deciding, .startingQEMU, .checkingCPU, .openingStream, .prepared, .receiving:
            return cleanUp(MigrationError(.peerLost, "keeld restarted during the migration"), notify: false)
        case .finishing:
            return [.awaitIncomingCompletion]
        case .committing:
            guard let definition else { return [] }
            return [.commitDefinition(persistentDefinition ?? definition, persistent: options.persistent)]
        case .resuming:
            return [.resumeGuest]
        }
    }
}
