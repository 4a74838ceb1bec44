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
import NIOCore

/// The destination side of `MigrationService`: one `MigrationDestination` per peer connection.
extension MigrationService {
    private enum DestinationInput: Sendable {
        case event(MigrationDestination.Event)
        case tick
    }

    /// Serves one peer connection: a `query`, or a whole incoming migration.
    func serve(_ connection: PeerConnection) async {
        let driver = self.driver
        let logger = self.logger
        let local = connection.channel.localAddress?.ipAddress ?? listen?.host ?? "127.0.0.1"
        var machine = MigrationDestination(configuration: .init(host: host, versions: versions, tlsStream: tls != nil))
        let streamTLS = tls.map { MigrationStreamTLS(identity: $0.directory, endpoint: .server) }
        let (inputs, continuation) = AsyncStream<DestinationInput>.makeStream()
        var name: String?
        var hadDefinition = true
        var capabilities: QEMUCapabilities?
        var job: Driver.MigrationJob?
        var resumeWanted = false
        // Whether `incoming` was published: from then on this host's events tell how it ended.
        var announced = false
        let bus = self.bus
        let observer = bus.map { bus in DomainJob.Observer { domain, job in bus.publish(.progress(domain, job)) } }
        var iterator = inputs.makeAsyncIterator()
        do {
            try await connection.executeThenClose { inbound, outbound in
                try await withThrowingTaskGroup(of: Void.self) { group in
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
                    let began = since
                    loop: while true {
                        let phase = machine.phase
                        var event: MigrationDestination.Event?
                        while event == nil {
                            guard let input = await iterator.next() else { break loop }
                            switch input {
                            case .event(.received(let message)):
                                if case .query(let identity) = message.body, machine.phase == .idle {
                                    // A query on a fresh channel: answered from the registry.
                                    let presence = driver.migrationPresence(name: identity.name)
                                    try await outbound.write(PeerChannel.frame(MigrationMessage(message.version, .queryReply(presence))))
                                    break loop
                                }
                                if case .finish(let finish) = message.body {
                                    resumeWanted = finish.resume && !machine.options.paused
                                }
                                event = .received(message)
                            case .event(let received):
                                event = received
                            case .tick:
                                if machine.qemuMayExist, let name, Self.isDead(driver, name),
                                   ![.idle, .negotiated, .deciding, .startingQEMU, .completed, .failed].contains(machine.phase) {
                                    event = .qemuExited
                                    break
                                }
                                switch machine.awaiting {
                                case .message, .local:
                                    if ContinuousClock.now - since > Self.stepDeadline { event = .timedOut }
                                case .stream:
                                    if ContinuousClock.now - since > Self.streamDeadline { event = .timedOut }
                                case .nothing:
                                    break
                                }
                            }
                        }
                        guard let event else { break }
                        let actions = machine.handle(event)
                        if machine.phase != phase { since = .now }
                        if name == nil, let domain = machine.domain { name = domain.name }
                        if let name, machine.phase != phase {
                            Self.logPhase(logger, name: name, role: "destination", phase: machine.phase.rawValue, since: began)
                        }
                        if let name {
                            self.persist(name: name, role: "destination", phase: machine.phase.rawValue, version: machine.version, uri: nil,
                                         peer: machine.source?.name ?? "", running: resumeWanted)
                            if machine.phase != phase { await self.hold(name: name, role: "destination", phase: machine.phase.rawValue) }
                        }
                        for action in actions {
                            switch action {
                            case .send(let message):
                                do {
                                    try await outbound.write(PeerChannel.frame(message))
                                } catch {
                                    continuation.yield(.event(.peerLost))
                                }
                            case .decideCPU(let incoming, let definition):
                                do {
                                    let plan = try await driver.planIncoming(definition: definition, incoming: incoming)
                                    capabilities = plan.capabilities
                                    hadDefinition = plan.hadDefinition
                                    continuation.yield(.event(.cpuDecided(plan.verdict)))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .startQEMU(let definition, let check, _):
                                do {
                                    guard let capabilities else { throw QEMUError(.invalidState, "no capabilities for the incoming QEMU") }
                                    job = DomainJob.$observer.withValue(observer) { driver.beginMigrationJob(name: definition.name, incoming: true) }
                                    try await driver.startIncoming(definition: definition, check: check, capabilities: capabilities)
                                    continuation.yield(.event(.qemuStarted))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .checkLiveCPU(let check):
                                do {
                                    try await driver.checkIncomingCPU(name: name ?? "", check: check, original: machine.definition?.cpu)
                                    continuation.yield(.event(.liveCPUChecked))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .acceptStream:
                                do {
                                    let uri = try await driver.listenIncoming(name: name ?? "", host: local,
                                                                              tls: machine.options.tlsStream ? streamTLS : nil)
                                    logger.info("migration: the incoming QEMU listens", metadata: [
                                        "domain": "\(name ?? "")", "uri": "\(uri)", "tls": "\(machine.options.tlsStream)",
                                    ])
                                    continuation.yield(.event(.listening(uri: uri)))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .awaitIncomingCompletion:
                                let target = name ?? ""
                                if let job {
                                    group.addTask {
                                        do {
                                            try await driver.waitIncomingMigration(name: target, job: job)
                                            continuation.yield(.event(.incomingCompleted))
                                        } catch {
                                            continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                        }
                                    }
                                }
                            case .commitDefinition(let definition, let persistent):
                                do {
                                    try driver.commitIncoming(name: definition.name, definition: definition, persistent: persistent)
                                    // The guest is this host's now: a restarted keeld must not
                                    // stop it as an interrupted incoming job.
                                    job?.finish()
                                    continuation.yield(.event(.definitionCommitted))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .resumeGuest:
                                do {
                                    try await driver.resumeAfterMigration(name: name ?? "")
                                    continuation.yield(.event(.guestResumed))
                                } catch {
                                    continuation.yield(.event(.operationFailed(Self.migrationError(error))))
                                }
                            case .killQEMU:
                                if let name { driver.killIncoming(name: name) }
                            case .discardDefinition:
                                if let name, !hadDefinition { driver.store.removeDefinition(name) }
                            }
                        }
                        if let name, machine.phase != phase {
                            announced = self.publishIncoming(machine, name: name, announced: announced, hadDefinition: hadDefinition)
                        }
                        if machine.phase == .completed || machine.phase == .failed {
                            // The source's `confirm` is informative; wait for it briefly.
                            if machine.phase == .completed, !machine.options.dryRun {
                                let limit = ContinuousClock.now + .seconds(2)
                                while !machine.confirmed, ContinuousClock.now < limit, let input = await iterator.next() {
                                    if case .event(let event) = input { _ = machine.handle(event) }
                                }
                            }
                            break
                        }
                    }
                    group.cancelAll()
                }
            }
        } catch {
            logger.info("migration: peer channel closed", metadata: ["error": "\(error)"])
        }
        continuation.finish()
        job?.finish()
        if machine.phase != .completed && machine.phase != .failed {
            // The channel ended the loop: settle by the machine's own rules.
            for action in machine.handle(.peerLost) {
                if case .killQEMU = action, let name { driver.killIncoming(name: name) }
                if case .discardDefinition = action, let name, !hadDefinition { driver.store.removeDefinition(name) }
            }
        }
        if let name, announced, machine.phase == .failed {
            bus?.publish(DomainEvent(.migrationFailed, domain: name, detail: machine.error?.message ?? "the incoming migration failed"))
        }
        if let name, machine.options.tlsStream, machine.phase == .completed, !machine.options.dryRun {
            // The stream is over: the guest keeps no credentials (a failure killed the QEMU and
            // removed them).
            await driver.disableMigrationTLS(name: name)
        }
        if let name {
            removeRecord(name)
            logger.info("incoming migration", metadata: [
                "domain": "\(name)", "phase": "\(machine.phase.rawValue)", "protocol": "\(machine.version.map(\.description) ?? "-")",
                "error": "\(machine.error?.message ?? "-")",
            ])
        }
    }

    /// The destination's events at a change of phase: `incoming` once Prepare is accepted (the
    /// QEMU listens), then `defined` (a persistent migration) and `started` (detail `migrated`,
    /// then `paused` when it stays paused) once this host owns the guest, or `migration-failed`.
    /// A refusal in Prepare publishes nothing: nothing of the guest was here.
    ///
    /// - Returns: whether `incoming` was published.
    private func publishIncoming(_ machine: MigrationDestination, name: String, announced: Bool, hadDefinition: Bool) -> Bool {
        guard let bus, !machine.options.dryRun else { return announced }
        switch machine.phase {
        case .prepared where !announced:
            bus.publish(DomainEvent(.incoming, domain: name, detail: machine.source?.name))
            return true
        case .completed where announced:
            if machine.options.persistent {
                bus.publish(DomainEvent(.defined, domain: name, detail: hadDefinition ? "updated" : "added"))
            }
            bus.publish(DomainEvent(.started, domain: name, detail: "migrated"))
            if !machine.running {
                bus.publish(DomainEvent(.paused, domain: name, detail: "migrated"))
            }
            return true
        case .failed where announced:
            bus.publish(DomainEvent(.migrationFailed, domain: name, detail: machine.error?.message ?? "the incoming migration failed"))
            return false
        default:
            return announced
        }
    }
}
