import Glibc
import KeelQMP

extension Driver {
    /// What recovery did for one domain.
    public struct Recovery: Sendable {
        public var name: String
        public var operation: DomainJob.Operation
        public var action: String
    }

    /// Finishes jobs whose process died (a `keel` or `keeld` killed mid-save or mid-restore):
    /// an interrupted save leaves the guest running as it was (the migration is cancelled, the
    /// vCPUs resumed; the image stays marked incomplete), an interrupted restore leaves no
    /// half-started guest. Jobs whose process is alive are left alone.
    @discardableResult
    public func recoverInterruptedJobs() async -> [Recovery] {
        var recoveries: [Recovery] = []
        for file in POSIXFile.list(store.root + "/run") where file.hasSuffix(".job") {
            let name = String(file.dropLast(".job".count))
            guard let job = Self.readJobRecord(store.jobPath(name)) else { continue }
            if job.pid == getpid() || kill(job.pid, 0) == 0 || errno == EPERM { continue }
            guard let lock = try? DomainLock.acquire(store: store, name: name, job: "recovery", timeout: .milliseconds(200)) else { continue }
            defer { withExtendedLifetime(lock) {} }
            let status = try? store.status(name)
            let process = status.map { QEMUProcess(pid: $0.pid, qmpSocket: $0.qmpSocket) }
            switch job.operation {
            case .restore, .migrationIn:
                process?.terminate(grace: .seconds(2))
                store.clearRuntime(name)
                recoveries.append(Recovery(name: name, operation: job.operation, action: "stopped the half-restored guest"))
            case .save, .migrationOut:
                guard let status, let process, process.isAlive else {
                    recoveries.append(Recovery(name: name, operation: job.operation, action: "QEMU is gone"))
                    break
                }
                let wasRunning = status.state == .running
                let resumed = (try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
                    _ = try? await client.execute("migrate_cancel")
                    if wasRunning {
                        try await client.execute("cont")
                    }
                    return true
                }) ?? false
                recoveries.append(Recovery(name: name, operation: job.operation,
                                           action: resumed ? (wasRunning ? "cancelled the save and resumed the guest" : "cancelled the save") : "could not reach QEMU"))
            }
            POSIXFile.remove(store.jobPath(name))
            POSIXFile.remove(store.jobAbortPath(name))
        }
        return recoveries
    }
}
