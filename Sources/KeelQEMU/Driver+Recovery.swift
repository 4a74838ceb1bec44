import Glibc
import KeelQMP
import KeelSaveImage

extension Driver {
    /// What recovery did for one domain.
    public struct Recovery: Sendable {
        public var name: String
        /// The interrupted job; nil for a QEMU whose start never completed.
        public var operation: DomainJob.Operation?
        public var action: String
    }

    /// Finishes jobs whose process died (a `keel` or `keeld` killed mid-save, mid-restore or
    /// mid-start):
    ///
    /// - an interrupted save leaves the guest running as it was (the migration is cancelled, the
    ///   vCPUs resumed; the image stays marked incomplete) — unless the image was already marked
    ///   complete, which commits the save: then QEMU is stopped as the save would have;
    /// - an interrupted restore leaves no half-started guest: its QEMU is stopped, also when it
    ///   had not yet been recorded in a status file;
    /// - a QEMU of this state directory that no status file names (a start or restore killed
    ///   before it wrote one) is stopped.
    ///
    /// Jobs whose process is alive, and domains another process holds, are left alone.
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
                // Its QEMU may have been spawned before the status file named it.
                for pid in qemuProcesses()[name] ?? [] {
                    QEMUProcess(pid: pid, qmpSocket: store.qmpPath(name)).terminate(grace: .seconds(2))
                }
                store.clearRuntime(name)
                recoveries.append(Recovery(name: name, operation: job.operation, action: "stopped the half-restored guest"))
            case .save, .migrationOut:
                guard let status, let process, process.isAlive else {
                    if let status, job.file.map(Self.isCompleteImage) == true {
                        // QEMU died after the image was committed: the guest is saved.
                        store.clearRuntime(status.live.name)
                        recoveries.append(Recovery(name: name, operation: job.operation, action: "the save had completed; QEMU is gone"))
                    } else {
                        recoveries.append(Recovery(name: name, operation: job.operation, action: "QEMU is gone"))
                    }
                    break
                }
                if job.file.map(Self.isCompleteImage) == true {
                    // The image is complete and synced: the save is done but for stopping QEMU.
                    _ = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(5)) { client in
                        try await client.execute("quit")
                    }
                    process.terminate(grace: .seconds(3), quitting: .milliseconds(500))
                    store.clearRuntime(name)
                    recoveries.append(Recovery(name: name, operation: job.operation, action: "the save had completed; stopped QEMU"))
                    break
                }
                let wasRunning = status.state == .running
                let resumed = (try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(10)) { client in
                    _ = try? await client.execute("migrate_cancel")
                    // QEMU refuses `cont` while it finishes the migration ("Migration is not
                    // finalized yet"); the cancel or the completion settles within moments.
                    try await Self.settleMigration(client)
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
        recoveries += stopUnrecordedProcesses()
        return recoveries
    }

    /// Brings the recorded state of every running domain in line with QEMU's own: a job killed
    /// between telling QEMU to stop or continue and recording it (start, suspend, resume)
    /// leaves them apart, and the guest would be listed paused while it runs, or the reverse.
    /// Domains another process holds are left alone.
    @discardableResult
    public func reconcileRunStates() async -> [Recovery] {
        var recoveries: [Recovery] = []
        for file in POSIXFile.list(store.root + "/run").sorted() where file.hasSuffix(".status.xml") {
            let name = String(file.dropLast(".status.xml".count))
            guard let lock = try? DomainLock.acquire(store: store, name: name, job: "recovery", timeout: .milliseconds(200)) else { continue }
            defer { withExtendedLifetime(lock) {} }
            guard case (let state, var status?)? = try? self.state(of: name), state == .running || state == .paused,
                  let running = try? await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(5), commandDeadline: .seconds(5), { client in
                      try await client.execute("query-status")["running"]?.boolValue
                  })
            else { continue }
            let actual: DomainStatus.State = running ? .running : .paused
            guard status.state != actual else { continue }
            let recorded = status.state
            status.state = actual
            guard (try? store.save(status)) != nil else { continue }
            recoveries.append(Recovery(name: name, operation: nil, action: "recorded it \(actual.rawValue) as QEMU is (it was recorded \(recorded.rawValue))"))
        }
        return recoveries
    }

    /// Stops the QEMU processes of this state directory that no status file names: a start or
    /// restore whose process died after spawning QEMU and before recording it. Nothing else
    /// would ever stop them, and a later start of the domain would run a second QEMU beside.
    func stopUnrecordedProcesses() -> [Recovery] {
        var recoveries: [Recovery] = []
        for (name, pids) in qemuProcesses().sorted(by: { $0.key < $1.key }) {
            guard let lock = try? DomainLock.acquire(store: store, name: name, job: "recovery", timeout: .milliseconds(200)) else { continue }
            defer { withExtendedLifetime(lock) {} }
            let status = try? store.status(name)
            let strays = pids.filter { $0 != status?.pid }
            guard !strays.isEmpty else { continue }
            for pid in strays {
                QEMUProcess(pid: pid, qmpSocket: store.qmpPath(name)).terminate(grace: .seconds(2))
            }
            if status == nil {
                store.clearRuntime(name)
            }
            recoveries.append(Recovery(name: name, operation: nil, action: "stopped QEMU \(strays.map(String.init).joined(separator: ", ")), which no status file names"))
        }
        return recoveries
    }

    /// The live QEMU processes started for this state directory, by domain: found by their
    /// `-pidfile STATE/run/NAME.pid` argument, so also those whose pidfile or status file was
    /// never written.
    public func qemuProcesses() -> [String: [Int32]] {
        let prefix = store.root + "/run/"
        var found: [String: [Int32]] = [:]
        for entry in POSIXFile.list("/proc") {
            guard let pid = Int32(entry), pid != getpid(),
                  let bytes = try? POSIXFile.read("/proc/\(entry)/cmdline", limit: 1 << 20)
            else { continue }
            let arguments = bytes.split(separator: 0, omittingEmptySubsequences: false)
            guard let index = arguments.firstIndex(where: { $0.elementsEqual("-pidfile".utf8) }), index + 1 < arguments.count else { continue }
            let path = String(decoding: arguments[index + 1], as: UTF8.self)
            guard path.hasPrefix(prefix), path.hasSuffix(".pid") else { continue }
            let name = String(path.dropFirst(prefix.count).dropLast(".pid".count))
            guard !name.isEmpty, !name.contains("/"), QEMUProcess(pid: pid, qmpSocket: "").isAlive else { continue }
            found[name, default: []].append(pid)
        }
        return found
    }

    /// Waits until QEMU's outgoing migration has ended (completed, failed or cancelled) and
    /// QEMU has left `finish-migrate`.
    ///
    /// - Throws: `QEMUError` `.timeout` when it does not within `timeout`.
    static func settleMigration(_ client: QMP.Client, timeout: Duration = .seconds(30)) async throws {
        let limit = ContinuousClock.now + timeout
        while true {
            let migration = try await client.execute("query-migrate")["status"]?.stringValue ?? "none"
            let run = try await client.execute("query-status")["status"]?.stringValue ?? ""
            if ["completed", "failed", "cancelled", "none"].contains(migration) && run != "finish-migrate" { return }
            if ContinuousClock.now >= limit {
                throw QEMUError(.timeout, "QEMU's migration did not end within \(timeout.components.seconds) s (\(migration), \(run))")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    static func isCompleteImage(_ path: String) -> Bool {
        (try? SaveImage.read(path: path, options: .metadata))?.isComplete ?? false
    }
}
