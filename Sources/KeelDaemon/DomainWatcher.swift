import KeelQEMU
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Follows the QEMU process of every running domain and publishes what happens to it without
/// a job of this daemon: the guest powering off (`shutdown`), QEMU told to quit by someone else
/// (`stopped`), QEMU dying (`crashed`).
///
/// Each QEMU is followed on its event monitor (`Driver.waitForExit`), never on the monitor the
/// driver's commands use. Jobs of this daemon that stop QEMU (destroy, save) clear the
/// domain's runtime files and publish their own event while holding the domain's gate, so the
/// watcher takes the gate before deciding: if the status file still names the process that
/// ended, nobody accounted for the exit. A guest powering off is always the watcher's to report,
/// as `shutdown` asks the guest and returns once QEMU is gone.
///
/// Domains are followed from the moment a job of this daemon starts them, and found by a scan
/// of the state directory every `rescanInterval` (those running when keeld starts, and those
/// started by an embedded `keel`). On graceful shutdown the watcher stops and closes the event
/// bus, which ends every `GET /v1/events` stream, so the HTTP server can drain.
final class DomainWatcher: Service, Sendable {
    private struct Key: Hashable {
        var name: String
        var pid: Int32
    }

    let holder: DriverHolder
    let gates: DomainGateRegistry
    let bus: EventBus
    let logger: Logger
    let rescanInterval: Duration
    private let requests: AsyncStream<DomainStatus>
    private let requestSink: AsyncStream<DomainStatus>.Continuation
    private let followed = NIOLockedValueBox(Set<Key>())

    init(holder: DriverHolder, gates: DomainGateRegistry, bus: EventBus, logger: Logger, rescanInterval: Duration = .seconds(5)) {
        self.holder = holder
        self.gates = gates
        self.bus = bus
        self.logger = logger
        self.rescanInterval = rescanInterval
        (requests, requestSink) = AsyncStream.makeStream(of: DomainStatus.self)
    }

    /// Follows the QEMU process of `status` (once; repeated calls for the same process are ignored).
    func watch(_ status: DomainStatus) {
        requestSink.yield(status)
    }

    /// The number of QEMU processes followed.
    var count: Int { followed.withLockedValue { $0.count } }

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.rescan() }
            for await status in requests.cancelOnGracefulShutdown() {
                let key = Key(name: status.live.name, pid: status.pid)
                guard followed.withLockedValue({ $0.insert(key).inserted }) else { continue }
                group.addTask {
                    await self.follow(status)
                    _ = self.followed.withLockedValue { $0.remove(key) }
                }
            }
            group.cancelAll()
        }
        bus.close()
    }

    /// Finds running domains in the state directory until cancelled.
    private func rescan() async {
        while !Task.isCancelled {
            let driver = holder.driver
            for domain in (try? driver.list()) ?? [] where domain.state == .running || domain.state == .paused {
                if case (_, let status?)? = try? driver.state(of: domain.name) {
                    watch(status)
                }
            }
            try? await Task.sleep(for: rescanInterval)
        }
    }

    /// Waits for one QEMU process to end and reports how, unless a job accounted for it.
    private func follow(_ status: DomainStatus) async {
        let name = status.live.name
        guard let exit = await holder.driver.waitForExit(of: status) else { return }
        let gate = await gates.gate(for: name)
        while !Task.isCancelled {
            do {
                try await gate.run("watch", timeout: .seconds(60)) { self.report(exit, name: name) }
                return
            } catch {
                // A long job holds the domain; it may be the one accounting for the exit.
                continue
            }
        }
    }

    /// Publishes the exit of `exit.pid` when no job of this daemon did; holds the domain's gate.
    private func report(_ exit: DomainExit, name: String) {
        let driver = holder.driver
        let status = try? driver.store.status(name)
        // An incoming migration's QEMU is the migration's to report (`migration-failed`).
        if let status, status.pid == exit.pid, status.reason == Driver.incomingReason { return }
        let unaccounted = status?.pid == exit.pid
        let event: DomainEvent
        switch exit.cause {
        case .guestShutdown:
            if unaccounted { driver.clearExitedRuntime(name: name, pid: exit.pid) }
            event = DomainEvent(.shutdown, domain: name, detail: "guest")
        case .hostShutdown(let reason):
            guard unaccounted else { return }
            driver.clearExitedRuntime(name: name, pid: exit.pid)
            event = DomainEvent(.stopped, domain: name, detail: reason)
        case .crashed(let reason):
            // The status stays: the domain reads as crashed until started or destroyed.
            guard unaccounted else { return }
            event = DomainEvent(.crashed, domain: name, detail: reason)
        }
        logger.log(level: event.event == .crashed ? .warning : .info, "domain \(event.event.rawValue)", metadata: [
            "domain": "\(name)", "pid": "\(exit.pid)", "detail": "\(event.detail ?? "")",
        ])
        bus.publish(event)
    }
}
