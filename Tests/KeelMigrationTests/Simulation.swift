import KeelCPU
import KeelDomain
import KeelMigration

/// Both state machines and the world they act on — two hosts, their QEMUs, their definitions,
/// the control channel and QEMU's stream — driven in memory, one delivery at a time, with a
/// fault injected before any step. Every message crosses the wire as a JSON frame.
struct Simulation {
    enum SourceQEMU: Equatable { case running, paused, stopped, dead }
    enum DestinationQEMU: Equatable { case none, listening, incoming, loaded, running, paused, dead }
    enum SourceDefinition: Equatable { case active, migrated, undefined }
    enum DestinationDefinition: Equatable { case none, incoming, committed(persistent: Bool) }
    enum Stream: Equatable { case idle, running(remaining: Int), completed, failed }

    enum Fault: String, CaseIterable, Sendable {
        case cutNetwork, sourceTimeout, destinationTimeout, sourceStepFails, destinationStepFails
        case killSourceQEMU, killDestinationQEMU, restartSourceKeeld, restartDestinationKeeld, abortBySource
    }

    enum Delivery {
        case source(MigrationSource.Event)
        case destination(MigrationDestination.Event)
        /// A message on the control channel (lost when it breaks).
        case message(to: Side, MigrationMessage, channel: Int)
        case streamStep
    }

    enum Side { case source, destination }

    var source: MigrationSource
    var destination: MigrationDestination
    var verdict: (IncomingCPU) -> CPUVerdict = { _ in CPUVerdict() }

    var sourceQEMU: SourceQEMU
    var destinationQEMU = DestinationQEMU.none
    var sourceDefinition = SourceDefinition.active
    var destinationDefinition = DestinationDefinition.none
    var stream = Stream.idle
    var pending: [Delivery] = []
    /// The control channel's generation; a break makes every message of older ones vanish.
    var channel = 0
    var connected = true
    /// Whether the source can reach the destination again after a break (for `query`).
    var reachable = true
    var queries = 0
    var failNextSourceStep = false
    var failNextDestinationStep = false
    var awaitingIncomingCompletion = false

    var log: [String] = []
    var sent: [MigrationMessage] = []
    var sourceActions: [MigrationSource.Action] = []
    var destinationActions: [MigrationDestination.Action] = []
    var violations: [String] = []

    init(request: MigrationSource.Request, destination: MigrationDestination.Configuration) {
        source = MigrationSource(request: request)
        self.destination = MigrationDestination(configuration: destination)
        sourceQEMU = request.domain.running ? .running : .paused
    }

    /// Runs to quiescence, injecting `fault` before delivery number `step`.
    mutating func run(fault: Fault? = nil, at step: Int = 0, reconnect: Bool = true) {
        perform(source.handle(.start))
        var index = 0
        var injected = false
        while index < 400 {
            if let fault, !injected, index >= step || pending.isEmpty {
                inject(fault, reconnect: reconnect)
                injected = true
            }
            guard !pending.isEmpty else { break }
            deliver(pending.removeFirst())
            checkNeverRunningTwice()
            index += 1
        }
        if index >= 400 { violations.append("did not settle") }
    }

    /// How many deliveries a fault-free run takes.
    static func length(of simulation: Simulation) -> Int {
        var copy = simulation
        var count = 0
        copy.perform(copy.source.handle(.start))
        while !copy.pending.isEmpty && count < 400 {
            copy.deliver(copy.pending.removeFirst())
            count += 1
        }
        return count
    }

    // MARK: delivery

    mutating func deliver(_ delivery: Delivery) {
        switch delivery {
        case .source(let event):
            log.append("source ← \(event)")
            perform(source.handle(event))
        case .destination(let event):
            log.append("destination ← \(event)")
            perform(destination.handle(event))
        case .message(let side, let message, let generation):
            guard generation == channel || generation < 0 else { return }
            switch side {
            case .source:
                log.append("source ← \(message.type)")
                perform(source.handle(.received(message)))
            case .destination:
                log.append("destination ← \(message.type)")
                if case .query = message.body {
                    answerQuery(message)
                } else {
                    perform(destination.handle(.received(message)))
                }
            }
        case .streamStep:
            advanceStream()
        }
    }

    /// A query arrives on a fresh channel; its answer goes back on that channel.
    mutating func answerQuery(_ message: MigrationMessage) {
        for action in destination.handle(.received(message)) {
            destinationActions.append(action)
            if case .send(let reply) = action {
                pending.append(.message(to: .source, wire(reply), channel: -1))
            } else {
                perform([action])
            }
        }
    }

    mutating func advanceStream() {
        guard case .running(let remaining) = stream else { return }
        guard sourceQEMU == .running || sourceQEMU == .paused, destinationQEMU == .incoming else {
            failStream()
            return
        }
        if remaining > 1 {
            stream = .running(remaining: remaining - 1)
            pending.append(.streamStep)
            return
        }
        stream = .completed
        sourceQEMU = .paused
        destinationQEMU = .loaded
        var statistics = MigrationStatistics()
        statistics.timeElapsed = 812
        statistics.downtime = 21
        pending.append(.source(.streamCompleted(statistics)))
        if awaitingIncomingCompletion {
            awaitingIncomingCompletion = false
            pending.append(.destination(.incomingCompleted))
        }
    }

    /// The stream broke: the source's QEMU reports the failure, the destination's (which QEMU
    /// makes exit when an incoming migration fails) dies.
    mutating func failStream() {
        guard case .running = stream else { return }
        stream = .failed
        if sourceQEMU == .running || sourceQEMU == .paused {
            pending.append(.source(.operationFailed(MigrationError(.operationFailed, "migration failed"))))
        }
        if destinationQEMU == .incoming || destinationQEMU == .listening {
            destinationQEMU = .dead
            pending.append(.destination(.qemuExited))
        }
    }

    // MARK: actions

    mutating func wire(_ message: MigrationMessage) -> MigrationMessage {
        sent.append(message)
        do {
            var decoder = MigrationFrame.Decoder()
            decoder.append(try MigrationFrame.encode(message))
            guard let decoded = try decoder.next(), decoded == message else {
                violations.append("\(message.type) changed on the wire")
                return message
            }
            return decoded
        } catch {
            violations.append("\(message.type) cannot cross the wire: \(error)")
            return message
        }
    }

    mutating func perform(_ actions: [MigrationSource.Action]) {
        for action in actions {
            sourceActions.append(action)
            log.append("source → \(action)")
            switch action {
            case .send(let message):
                if connected {
                    pending.append(.message(to: .destination, wire(message), channel: channel))
                } else if reachable {
                    // After a break the transport reaches the destination on a new channel.
                    switch message.body {
                    case .abort, .confirm: pending.append(.message(to: .destination, wire(message), channel: -1))
                    default: break
                    }
                }
            case .warn:
                break
            case .pauseGuest:
                if takeSourceFailure() { continue }
                if sourceQEMU == .running { sourceQEMU = .paused }
                pending.append(.source(.guestPaused))
            case .startMigration:
                if takeSourceFailure() { continue }
                if destinationQEMU == .incoming && (sourceQEMU == .running || sourceQEMU == .paused) {
                    stream = .running(remaining: 2)
                    pending.append(.streamStep)
                } else {
                    pending.append(.source(.operationFailed(MigrationError(.operationFailed, "migrate: the destination does not listen"))))
                }
            case .cancelMigration:
                failStream()
            case .resumeGuest:
                if sourceQEMU == .paused { sourceQEMU = .running }
            case .stopQEMU:
                if sourceQEMU != .dead { sourceQEMU = .stopped }
            case .markMigrated(let undefine):
                sourceDefinition = undefine ? .undefined : .migrated
            case .queryDestination:
                guard reachable, queries < 6 else { continue }
                queries += 1
                let identity = MigrationMessage.DomainIdentity(name: source.request.domain.migratable.name, uuid: source.request.domain.migratable.uuid ?? "")
                pending.append(.message(to: .destination, wire(MigrationMessage(source.version ?? .current, .query(identity))), channel: -1))
            }
        }
    }

    mutating func perform(_ actions: [MigrationDestination.Action]) {
        for action in actions {
            destinationActions.append(action)
            log.append("destination → \(action)")
            switch action {
            case .send(let message):
                if connected { pending.append(.message(to: .source, wire(message), channel: channel)) }
            case .decideCPU(let incoming, _):
                if takeDestinationFailure() { continue }
                pending.append(.destination(.cpuDecided(verdict(incoming))))
            case .startQEMU:
                destinationDefinition = .incoming
                if takeDestinationFailure() { continue }
                destinationQEMU = .listening
                pending.append(.destination(.qemuStarted))
            case .checkLiveCPU:
                if takeDestinationFailure() { continue }
                pending.append(.destination(.liveCPUChecked))
            case .acceptStream:
                if takeDestinationFailure() { continue }
                if destinationQEMU == .listening {
                    destinationQEMU = .incoming
                    pending.append(.destination(.listening(uri: "tcp:192.0.2.2:49152")))
                }
            case .awaitIncomingCompletion:
                if takeDestinationFailure() { continue }
                if destinationQEMU == .loaded {
                    pending.append(.destination(.incomingCompleted))
                } else if case .running = stream {
                    awaitingIncomingCompletion = true
                }
            case .commitDefinition(_, let persistent):
                if takeDestinationFailure() { continue }
                destinationDefinition = .committed(persistent: persistent)
                if destinationQEMU == .loaded { destinationQEMU = .paused }
                pending.append(.destination(.definitionCommitted))
            case .resumeGuest:
                if takeDestinationFailure() { continue }
                // "Make it run": idempotent, so a restarted keeld may ask again.
                if destinationQEMU == .loaded || destinationQEMU == .paused || destinationQEMU == .running {
                    destinationQEMU = .running
                    pending.append(.destination(.guestResumed))
                }
            case .killQEMU:
                if destinationQEMU != .none {
                    let wasIncoming = destinationQEMU == .incoming
                    destinationQEMU = .none
                    if wasIncoming, case .running = stream {
                        stream = .failed
                        if sourceQEMU == .running || sourceQEMU == .paused {
                            pending.append(.source(.operationFailed(MigrationError(.operationFailed, "migration failed"))))
                        }
                    }
                }
            case .discardDefinition:
                destinationDefinition = .none
            }
        }
    }

    mutating func takeSourceFailure() -> Bool {
        guard failNextSourceStep else { return false }
        failNextSourceStep = false
        pending.append(.source(.operationFailed(MigrationError(.operationFailed, "injected failure"))))
        return true
    }

    mutating func takeDestinationFailure() -> Bool {
        guard failNextDestinationStep else { return false }
        failNextDestinationStep = false
        pending.append(.destination(.operationFailed(MigrationError(.operationFailed, "injected failure"))))
        return true
    }

    // MARK: faults

    /// Breaks the control channel: messages in flight vanish, both sides learn it.
    mutating func breakChannel(notify: [Side]) {
        connected = false
        channel += 1
        for side in notify {
            pending.append(side == .source ? .source(.peerLost) : .destination(.peerLost))
        }
    }

    mutating func inject(_ fault: Fault, reconnect: Bool) {
        log.append("FAULT \(fault)")
        reachable = reconnect
        switch fault {
        case .cutNetwork:
            // The stream shares the network.
            failStream()
            breakChannel(notify: [.destination, .source])
        case .sourceTimeout:
            pending.append(.source(.timedOut))
        case .destinationTimeout:
            pending.append(.destination(.timedOut))
        case .sourceStepFails:
            failNextSourceStep = true
        case .destinationStepFails:
            failNextDestinationStep = true
        case .killSourceQEMU:
            if sourceQEMU != .stopped {
                sourceQEMU = .dead
                pending.append(.source(.qemuExited))
                failStream()
            }
        case .killDestinationQEMU:
            if destinationQEMU != .none {
                let streaming: Bool
                if case .running = stream { streaming = true } else { streaming = false }
                destinationQEMU = .dead
                pending.append(.destination(.qemuExited))
                if streaming {
                    stream = .failed
                    pending.append(.source(.operationFailed(MigrationError(.operationFailed, "migration failed"))))
                }
            }
        case .restartSourceKeeld:
            // The source's pending local results die with it; QEMU (and its stream) live on.
            pending.removeAll { if case .source = $0 { return true } else { return false } }
            breakChannel(notify: [.destination])
            reachable = true
            pending.append(.source(.daemonRestarted))
        case .restartDestinationKeeld:
            pending.removeAll { if case .destination = $0 { return true } else { return false } }
            awaitingIncomingCompletion = false
            breakChannel(notify: [.source])
            reachable = true
            pending.append(.destination(.daemonRestarted))
        case .abortBySource:
            pending.append(.source(.abortRequested))
        }
    }

    // MARK: invariants

    mutating func checkNeverRunningTwice() {
        if sourceQEMU == .running && destinationQEMU == .running {
            violations.append("the guest runs on both hosts")
        }
    }

    /// Whether the destination owns the guest.
    var destinationOwns: Bool {
        destination.phase == .completed && !source.request.options.dryRun
    }

    /// The end state's invariants; empty when they hold.
    func endViolations(fault: Fault?) -> [String] {
        var problems = violations
        let wasRunning = source.request.domain.running
        let sourceKilled = fault == .killSourceQEMU && sourceQEMU == .dead
        let destinationKilled = fault == .killDestinationQEMU && destinationQEMU == .dead
        if ![.completed, .failed, .idle].contains(destination.phase) {
            problems.append("destination stuck in \(destination.phase)")
        }
        if destinationOwns {
            let expected: [DestinationQEMU] = destination.running ? [.running] : [.paused, .loaded]
            if !destinationKilled && !expected.contains(destinationQEMU) {
                problems.append("destination owns the guest but its QEMU is \(destinationQEMU)")
            }
            if case .committed = destinationDefinition {} else {
                problems.append("destination owns the guest without a definition (\(destinationDefinition))")
            }
            switch source.phase {
            case .completed:
                if sourceQEMU != .stopped && !sourceKilled { problems.append("source completed but its QEMU is \(sourceQEMU)") }
                if sourceDefinition == .active { problems.append("source still defines the guest as its own") }
            case .outcomeUnknown:
                if reachable { problems.append("source left the outcome unknown although the destination is reachable") }
                if sourceQEMU == .running { problems.append("source resumed blindly") }
            default:
                problems.append("destination owns the guest but the source is \(source.phase)")
            }
        } else {
            if destinationQEMU != .none && destinationQEMU != .dead {
                problems.append("destination does not own the guest but its QEMU is \(destinationQEMU)")
            }
            if destinationDefinition != .none {
                problems.append("destination does not own the guest but keeps a definition (\(destinationDefinition))")
            }
            if sourceDefinition != .active { problems.append("the source gave up its definition (\(sourceDefinition))") }
            switch source.phase {
            case .failed, .completed:
                if source.phase == .completed && !source.request.options.dryRun {
                    problems.append("source completed but the destination does not own the guest")
                }
                let expected: SourceQEMU = wasRunning ? .running : .paused
                if !sourceKilled && sourceQEMU != expected {
                    problems.append("the guest is \(sourceQEMU) on the source, expected \(expected)")
                }
            case .outcomeUnknown:
                if reachable { problems.append("source left the outcome unknown although the destination is reachable") }
                if sourceQEMU == .running { problems.append("source resumed blindly") }
            default:
                problems.append("source stuck in \(source.phase)")
            }
        }
        return problems
    }
}
