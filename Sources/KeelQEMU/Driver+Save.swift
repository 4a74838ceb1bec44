import Glibc
import KeelCPU
import KeelDomain
import KeelQMP
import KeelSaveImage

extension Driver {
    /// Saves a running domain to a libvirt-compatible image and stops it.
    ///
    /// The guest is paused; the image gets the original CPU in its domain XML and the updated
    /// CPU plus Keel's ABI record in its cookie; QEMU migrates into the file through a passed fd
    /// at unlimited bandwidth; the file is synced and only then marked complete; only then is
    /// QEMU stopped. On any failure the guest resumes as it was and no complete-looking image
    /// is left behind.
    ///
    /// - Parameters:
    ///   - running: override `was_running` (true: restore resumes; false: stays paused).
    ///   - compression: compress the QEMU stream as libvirt does.
    public func save(name: String, to path: String, running: Bool? = nil, compression: SaveImageCompression = .raw) async throws {
        let lock = try DomainLock.acquire(store: store, name: name, job: "save")
        defer { withExtendedLifetime(lock) {} }
        guard case (let state, let status?) = try self.state(of: name), state == .running || state == .paused else {
            throw QEMUError(.invalidState, "domain '\(name)' is not running")
        }
        let job = DomainJobRecorder(store: store, name: name, operation: .save, file: path)
        defer { job.finish() }
        try await QMP.Client.withConnection(to: status.qmpSocket, deadline: .seconds(10), commandDeadline: .seconds(30)) { client in
            let runState = try await client.execute("query-status")
            let wasRunning = runState["running"]?.boolValue ?? (state == .running)
            if wasRunning {
                try await client.execute("stop")
            }
            var writer: SaveImageWriter?
            do {
                let image = try SaveImageWriter(
                    path: path,
                    dataArea: SaveImageDataArea(xml: status.migratableDefinition.formatted(), cookie: saveCookie(for: status).formatted()),
                    wasRunning: running ?? wasRunning,
                    compression: compression
                )
                writer = image
                let fd = try image.streamFileDescriptor()
                try await client.sendFileDescriptor(fd, name: "keel-save")
                try await client.execute("migrate-set-parameters", arguments: ["max-bandwidth": .int(1 << 40)])
                try await client.execute("migrate", arguments: ["uri": "fd:keel-save"])
                try await waitForMigration(client) { info in try await job.update(info, client: client) }
                try image.finish()
            } catch {
                writer?.discard()
                if client.isConnected {
                    _ = try? await client.execute("migrate_cancel")
                    if wasRunning {
                        _ = try? await client.execute("cont")
                    }
                }
                if let error = error as? SaveImageError {
                    throw QEMUError(.io, "cannot save \(name): \(error.message)", cause: error)
                }
                if let error = error as? QMP.Error {
                    throw QEMUError(client.isConnected ? .io : .processExited, "cannot save \(name): \(error)", cause: error)
                }
                throw error
            }
            _ = try? await client.execute("quit")
        }
        QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).terminate(grace: .seconds(3), quitting: .milliseconds(100))
        store.clearRuntime(name)
    }

    /// The cookie for an image of `status`: the updated CPU when QEMU changed it (as libvirt
    /// writes it), `<slirpHelper/>`, and the ABI record.
    func saveCookie(for status: DomainStatus) -> SaveCookie {
        // The cookie's <cpu> is what libvirt reads: the guest's CPU in libvirt's vocabulary (its
        // model definitions, features it knows, every difference explicit, check='full'), so that
        // libvirt restoring the image gives the guest exactly these bits. It is always written:
        // libvirt ignores it when it equals the XML's CPU. Keel's ABI record keeps the whole CPU.
        var libvirtCPU = status.live.cpu.flatMap { cpu in (try? map.libvirtCPU(for: cpu)) ?? cpu }
        if libvirtCPU?.model != nil { libvirtCPU?.check = .full }
        return SaveCookie(
            cpu: libvirtCPU?.model != nil ? libvirtCPU : nil,
            slirpHelper: true,
            abiRecord: ABIRecord(
                requestedCPU: status.originalCPU ?? status.live.cpu,
                effectiveCPU: status.live.cpu,
                cpuidWords: status.cpuidWords,
                qemuVersion: status.qemuVersion,
                accelerator: status.accelerator.rawValue,
                machine: status.live.os.machine,
                managerVersion: Driver.version,
                host: HostFingerprint.current
            )
        )
    }

    /// Waits until the migration QEMU is running (outgoing or incoming) completes.
    ///
    /// - Throws: `QEMUError` `.io` with QEMU's reason when it fails or is cancelled.
    /// `progress` sees every `query-migrate` reply (for job records and abort requests).
    func waitForMigration(_ client: QMP.Client, timeout: Duration = .seconds(3600),
                          progress: ((QMP.Value) async throws -> Void)? = nil) async throws {
        let limit = ContinuousClock.now + timeout
        var delay = Duration.milliseconds(2)
        while true {
            let info = try await client.execute("query-migrate")
            try await progress?(info)
            switch info["status"]?.stringValue ?? "none" {
            case "completed":
                return
            case "failed", "cancelled":
                throw QEMUError(.io, "migration \(info["status"]?.stringValue ?? ""): \(info["error-desc"]?.stringValue ?? "no reason given")")
            default:
                if ContinuousClock.now > limit {
                    throw QEMUError(.timeout, "migration did not finish within \(timeout)")
                }
                try await Task.sleep(for: delay)
                // QEMU answers nothing while it finishes; a short cap keeps the wait close to the end.
                delay = min(delay * 2, .milliseconds(5))
            }
        }
    }
}

/// The saving host's CPU signature, microcode and kernel, for ABI records.
enum HostFingerprint {
    static var current: ABIRecord.Host {
        var host = ABIRecord.Host()
        if let cpuinfo = try? POSIXFile.readString("/proc/cpuinfo") {
            var fields: [String: String] = [:]
            for line in cpuinfo.split(separator: "\n") {
                if line.isEmpty { break }
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { continue }
                fields[parts[0].trimmingCharacters()] = parts[1].trimmingCharacters()
            }
            if let family = fields["cpu family"], let model = fields["model"], let stepping = fields["stepping"] {
                host.signature = "\(family)/\(model)/\(stepping)"
            }
            host.microcode = fields["microcode"]
        }
        var name = utsname()
        if uname(&name) == 0 {
            host.kernel = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return host
    }
}
