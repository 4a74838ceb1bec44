import Foundation
import KeelTestSupport
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import Testing

/// Runs a program and returns its status and output.
func run(_ program: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let result = try Subprocess.run(program, arguments, timeout: 120)
    if result.timedOut { throw Subprocess.Failure(description: "\(program) \(arguments) did not finish within 120 s") }
    return (result.status, result.stdout, result.stderr)
}

/// Faults and bad input: a clear error before QEMU loads anything, nothing left running or
/// locked, images untouched.
@Suite("QEMU driver under faults", .serialized)
struct FaultTests {
    static let cpu = "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"

    /// Saves a fresh guest and returns the image path.
    func savedImage(_ fixture: DriverFixture, name: String) async throws -> String {
        try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: Self.cpu))
        try await fixture.driver.start(name: name)
        _ = try await fixture.cpuidBlock(name)
        let image = fixture.directory.appendingPathComponent("\(name).img").path
        try await fixture.driver.save(name: name, to: image)
        return image
    }

    /// Rewrites the data area of a copy of `image` through `edit`.
    func variant(of image: String, _ fixture: DriverFixture, _ label: String, edit: (inout String, inout String?) -> Void) throws -> String {
        let reader = try SaveImageReader(path: image)
        defer { reader.close() }
        var xml = reader.info.dataArea.xml
        var cookie = reader.info.dataArea.cookie
        edit(&xml, &cookie)
        let path = fixture.directory.appendingPathComponent("\(label).img").path
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: xml, cookie: cookie), wasRunning: true)
        let stream = try reader.openStream()
        _ = try writer.copyStream(from: stream.fileDescriptor)
        try stream.finish()
        try writer.finish()
        return path
    }

    func expectRefusal(_ fixture: DriverFixture, _ path: String, containing text: String) async throws {
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        do {
            try await fixture.driver.restore(path: path)
            Issue.record("restore of \(path) succeeded")
        } catch let error as QEMUError {
            #expect(error.message.contains(text), "\(error.message)")
        }
        #expect(try fixture.driver.list().allSatisfy { $0.state == .shutoff }, "no guest is left running")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before, "the image is untouched")
    }

    @Test("truncated, partial, corrupt-cookie, other-accelerator and unknown-machine images are refused with clear errors")
    func badImages() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let image = try await savedImage(fixture, name: "bad")
            let data = try Data(contentsOf: URL(fileURLWithPath: image))
            let info = try SaveImage.read(path: image)

            let truncated = fixture.directory.appendingPathComponent("truncated.img").path
            try data.prefix(Int(info.streamOffset) - 10).write(to: URL(fileURLWithPath: truncated))
            try await expectRefusal(fixture, truncated, containing: "cannot restore from")

            let partial = fixture.directory.appendingPathComponent("partial.img").path
            var bytes = data
            bytes.replaceSubrange(0..<16, with: Array("LibvirtQemudPart".utf8))
            try bytes.write(to: URL(fileURLWithPath: partial))
            try await expectRefusal(fixture, partial, containing: "incomplete")

            let corrupt = try variant(of: image, fixture, "corrupt-cookie") { _, cookie in cookie = "<cookie><cpu><model>qemu64</model><feature policy='bogus' name='x'/></cpu></cookie>" }
            try await expectRefusal(fixture, corrupt, containing: "corrupt cookie")

            let otherAccelerator = try variant(of: image, fixture, "other-accel") { _, cookie in
                cookie = cookie?.replacingOccurrences(of: "accelerator='tcg'", with: "accelerator='kvm'")
            }
            try await expectRefusal(fixture, otherAccelerator, containing: "saved under kvm")

            let machine = try variant(of: image, fixture, "machine") { xml, _ in
                xml = xml.replacingOccurrences(of: "machine='pc-i440fx-7.2'", with: "machine='pc-i440fx-99.0'")
            }
            try await expectRefusal(fixture, machine, containing: "machine type 'pc-i440fx-99.0' is not supported")
        }
    }

    @Test("QEMU killed during a save: no complete-looking image, the domain is marked crashed, nothing hangs")
    func qemuKilledDuringSave() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "killsave"
            // 256 MiB of filled RAM makes the save long enough to interrupt.
            try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: 320, cpu: Self.cpu, cmdline: "fill=256"))
            let status = try await fixture.driver.start(name: name)
            try await waitForSerial(fixture, name, "FILLED")
            let image = fixture.directory.appendingPathComponent("killed.img").path
            let killer = Task {
                // Kill as soon as QEMU has started writing the stream.
                for _ in 0..<2000 {
                    if let size = try? FileManager.default.attributesOfItem(atPath: image)[.size] as? Int, size > 1 << 20 { break }
                    try await Task.sleep(for: .milliseconds(2))
                }
                kill(status.pid, SIGKILL)
            }
            do {
                try await fixture.driver.save(name: name, to: image)
                Issue.record("save succeeded although QEMU was killed")
            } catch let error as QEMUError {
                #expect(error.code == .processExited || error.code == .io, "\(error)")
            }
            _ = try await killer.value
            if FileManager.default.fileExists(atPath: image) {
                #expect(throws: SaveImageError.self) { try SaveImage.read(path: image) }
            }
            #expect(try fixture.driver.state(of: name).0 == .crashed)
            // The crashed domain can be started again; no stale socket or lock blocks it.
            try await fixture.driver.start(name: name)
            #expect(try fixture.driver.state(of: name).0 == .running)
        }
    }

    @Test("QEMU killed during a restore: an error, no half-started guest, no stale socket or lock")
    func qemuKilledDuringRestore() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "killrestore"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: 320, cpu: Self.cpu, cmdline: "fill=256"))
            try await fixture.driver.start(name: name)
            try await waitForSerial(fixture, name, "FILLED")
            let image = fixture.directory.appendingPathComponent("big.img").path
            try await fixture.driver.save(name: name, to: image)
            let pidfile = fixture.driver.store.pidPath(name)
            let killer = Task {
                // Kill the restoring QEMU as soon as its pidfile names it.
                for _ in 0..<5000 {
                    if let text = try? String(contentsOfFile: pidfile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                        try await Task.sleep(for: .milliseconds(30))
                        kill(pid, SIGKILL)
                        return
                    }
                    try await Task.sleep(for: .milliseconds(1))
                }
            }
            do {
                try await fixture.driver.restore(path: image)
                Issue.record("restore succeeded although QEMU was killed")
            } catch let error as QEMUError {
                #expect([.processExited, .io].contains(error.code), "\(error)")
            }
            _ = try await killer.value
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            #expect(!FileManager.default.fileExists(atPath: fixture.driver.store.qmpPath(name)))
            #expect(try SaveImage.read(path: image).isComplete, "the image is intact")
            try await fixture.driver.restore(path: image)
            #expect(try fixture.driver.state(of: name).0 == .running)
        }
    }

    @Test("a start needing a feature beyond this host's ceiling is refused naming the feature and its bits")
    func ceilingRefusesStart() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        let ceiling = try CPUDefinition(xmlString: "<cpu><model>qemu64</model><feature policy='disable' name='cx16'/></cpu>", as: .guest)
        try await DriverFixture.with(configuration: HostConfiguration(cpuCeiling: ceiling)) { fixture in
            try await fixture.driver.define(xml: fixture.domainXML(name: "capped", cpu: Self.cpu))
            do {
                try await fixture.driver.start(name: "capped")
                Issue.record("started beyond the ceiling")
            } catch let error as QEMUError {
                #expect(error.code == .incompatibleCPU)
                #expect(error.message == "the CPU exceeds this host's CPU ceiling: cx16 (CPUID[eax=0x1,ecx=0x0].ECX bit 13)")
                #expect(error.features.map(\.name) == ["cx16"])
            }
            #expect(try fixture.driver.state(of: "capped").0 == .shutoff)
        }
    }

    @Test("a save that runs out of disk space leaves the guest running as it was and no image behind")
    func diskFull() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let small = fixture.directory.appendingPathComponent("small")
            try FileManager.default.createDirectory(at: small, withIntermediateDirectories: true)
            let mount = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", small.path])
            guard mount.status == 0 else {
                print("SKIP: cannot mount a small tmpfs to fill (\(mount.stderr.trimmingCharacters(in: .whitespacesAndNewlines)))")
                return
            }
            defer { _ = try? run("/bin/umount", ["-l", small.path]) }
            let name = "full"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: 64, cpu: Self.cpu, cmdline: "fill=32"))
            try await fixture.driver.start(name: name)
            try await waitForSerial(fixture, name, "FILLED")
            let image = small.appendingPathComponent("full.img").path
            do {
                try await fixture.driver.save(name: name, to: image)
                Issue.record("save into a 2 MiB filesystem succeeded")
            } catch let error as QEMUError {
                #expect(error.code == .io, "\(error)")
            }
            #expect(!FileManager.default.fileExists(atPath: image), "no partial image is left")
            #expect(try fixture.driver.state(of: name).0 == .running, "the guest keeps running")
            let size = fixture.serialSize(name)
            try await waitForSerialGrowth(fixture, name, beyond: size)
        }
    }

    @Test("a guest with a qcow2 disk saves and restores")
    func qcow2Disk() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else { print("SKIP: qemu-img is not installed"); return }
        try await DriverFixture.with { fixture in
            let disk = fixture.directory.appendingPathComponent("disk.qcow2").path
            #expect(try run("/usr/bin/qemu-img", ["create", "-q", "-f", "qcow2", disk, "16M"]).status == 0)
            let name = "disky"
            let xml = fixture.domainXML(name: name, cpu: Self.cpu).replacingOccurrences(of: "<devices>", with: """
                <devices>
                    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='\(disk)'/><target dev='vda' bus='virtio'/></disk>
                """)
            try await fixture.driver.define(xml: xml)
            try await fixture.driver.start(name: name)
            let before = try await fixture.cpuidBlock(name)
            let image = fixture.directory.appendingPathComponent("disky.img").path
            try await fixture.driver.save(name: name, to: image, compression: .gzip)
            let offset = fixture.serialSize(name)
            try await fixture.driver.restore(path: image)
            #expect(try await fixture.cpuidBlock(name, after: offset) == before)
        }
    }

    func waitForSerialGrowth(_ fixture: DriverFixture, _ name: String, beyond size: Int, timeout: TimeInterval = 30) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if fixture.serialSize(name) > size { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("\(name) printed nothing more: it is not running")
    }

    @Test("a second modifying command on the same domain waits, then is refused naming the job in progress")
    func concurrentJobs() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "busy"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: Self.cpu))
            do {
                let lock = try DomainLock.acquire(store: fixture.driver.store, name: name, job: "save")
                defer { withExtendedLifetime(lock) {} }
                do {
                    try await fixture.driver.start(name: name)
                    Issue.record("start ran while a save held the domain")
                } catch let error as QEMUError {
                    #expect(error.code == .busy)
                    #expect(error.message.contains("domain \(name) is busy: save (pid \(getpid())) in progress"), "\(error.message)")
                }
            }
            try await fixture.driver.start(name: name)
            #expect(try fixture.driver.state(of: name).0 == .running)
        }
    }

    @Test("QEMU that fails while starting leaves no runtime files and a clear error")
    func failedStart() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "nokernel"
            let xml = fixture.domainXML(name: name, cpu: Self.cpu).replacingOccurrences(of: DriverFixture.guestPath ?? "", with: "/nonexistent/kernel.elf")
            try await fixture.driver.define(xml: xml)
            do {
                try await fixture.driver.start(name: name)
                Issue.record("started without a kernel")
            } catch let error as QEMUError {
                #expect(error.code == .processExited)
                #expect(error.message.contains("QEMU failed to start"), "\(error.message)")
                #expect(error.message.contains("kernel"), "QEMU's own reason is shown: \(error.message)")
            }
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            #expect(!FileManager.default.fileExists(atPath: fixture.driver.store.qmpPath(name)))
        }
    }

    func waitForSerial(_ fixture: DriverFixture, _ name: String, _ text: String, timeout: TimeInterval = 60) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: fixture.serialPath(name)), String(decoding: data, as: UTF8.self).contains(text) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("\(name) never printed \(text)")
    }
}

@Suite("recovery of jobs whose process died", .serialized)
struct RecoveryTests {
    @Test("a keel killed with SIGKILL mid-save: the image stays incomplete and recovery resumes the guest as it was")
    func killedSaver() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        let keel = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("keel").path
        guard FileManager.default.isExecutableFile(atPath: keel) else { print("SKIP: the keel binary is not next to the tests (\(keel))"); return }
        try await DriverFixture.with { fixture in
            let name = "killedsaver"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: 320, cpu: FaultTests.cpu, cmdline: "fill=256"))
            try await fixture.driver.start(name: name)
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !(String(decoding: FileManager.default.contents(atPath: fixture.serialPath(name)) ?? Data(), as: UTF8.self).contains("FILLED")) {
                try await Task.sleep(for: .milliseconds(100))
            }
            let image = fixture.directory.appendingPathComponent("killed.img").path
            let saver = try Subprocess.spawn(keel, ["save", name, image, "--state", fixture.driver.store.root], captureOutput: false)
            // Kill it once the job record shows the stream moving.
            for _ in 0..<3000 {
                if let job = try? fixture.driver.jobInfo(name: name), (job.dataProcessed ?? 0) > 0 { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            saver.signal(SIGKILL)
            #expect(saver.wait(timeout: 30) != nil, "the killed keel is reaped")
            if FileManager.default.fileExists(atPath: image) {
                #expect((try? SaveImage.read(path: image)) == nil, "the interrupted image does not read as complete")
            }
            let runFiles = (try? FileManager.default.contentsOfDirectory(atPath: fixture.driver.store.root + "/run")) ?? []
            let recoveries = await fixture.driver.recoverInterruptedJobs()
            #expect(recoveries.map(\.name) == [name], "run/: \(runFiles)")
            #expect(recoveries.first?.action == "cancelled the save and resumed the guest", "\(recoveries)")
            #expect(try fixture.driver.state(of: name).0 == .running)
            let size = fixture.serialSize(name)
            try await Task.sleep(for: .seconds(3))
            #expect(fixture.serialSize(name) > size, "the guest runs again: it keeps ticking")
            #expect(await fixture.driver.recoverInterruptedJobs().isEmpty, "nothing is left to recover")
        }
    }
}

/// Recovery of the windows a `kill -9` loop of keeld found: each case set up exactly.
@Suite("recovery of half-done jobs", .serialized)
struct HalfDoneJobRecoveryTests {
    /// The pid of a process that has exited.
    static func deadPID() throws -> Int32 {
        let child = try Subprocess.spawn("/bin/true", [], captureOutput: false)
        _ = child.finish(timeout: 30)
        return child.pid
    }

    static func writeJob(_ fixture: DriverFixture, _ name: String, _ operation: DomainJob.Operation, file: String?) throws {
        let now = DomainJob.wallClockMilliseconds()
        let job = DomainJob(operation: operation, pid: try deadPID(), startedMilliseconds: now, updatedMilliseconds: now, status: "active", file: file)
        try job.xmlElement.formatted().write(toFile: fixture.driver.store.jobPath(name), atomically: true, encoding: .utf8)
    }

    @Test("a QEMU that no status file names (its start or restore was killed before recording it) is stopped")
    func unrecordedQEMU() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "stray"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: FaultTests.cpu))
            let status = try await fixture.driver.start(name: name)
            try FileManager.default.removeItem(atPath: fixture.driver.store.statusPath(name))
            #expect(fixture.driver.qemuProcesses() == [name: [status.pid]], "found by its -pidfile argument")
            let recoveries = await fixture.driver.recoverInterruptedJobs()
            #expect(recoveries.map(\.name) == [name])
            #expect(recoveries.first?.operation == nil)
            #expect(fixture.driver.qemuProcesses().isEmpty, "the stray QEMU is gone")
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            try await fixture.driver.start(name: name)
            #expect(try fixture.driver.state(of: name).0 == .running, "the domain starts again, alone")
            #expect(fixture.driver.qemuProcesses()[name]?.count == 1)
        }
    }

    @Test("an interrupted restore whose QEMU was not yet recorded leaves no QEMU behind")
    func restoreBeforeStatus() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "halfrestore"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: FaultTests.cpu))
            try await fixture.driver.start(name: name)
            try FileManager.default.removeItem(atPath: fixture.driver.store.statusPath(name))
            try HalfDoneJobRecoveryTests.writeJob(fixture, name, .restore, file: "/nonexistent.img")
            let recoveries = await fixture.driver.recoverInterruptedJobs()
            #expect(recoveries.map(\.action) == ["stopped the half-restored guest"])
            #expect(fixture.driver.qemuProcesses().isEmpty)
            #expect(!FileManager.default.fileExists(atPath: fixture.driver.store.jobPath(name)))
        }
    }

    @Test("a save killed after its image was marked complete is finished: QEMU stops, the domain is shut off, the image stays")
    func saveCommitted() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            // A complete image, as the interrupted save had written it.
            let image = fixture.directory.appendingPathComponent("done.img").path
            try await fixture.driver.define(xml: fixture.domainXML(name: "other", cpu: FaultTests.cpu))
            try await fixture.driver.start(name: "other")
            try await fixture.driver.save(name: "other", to: image)
            let name = "committed"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: FaultTests.cpu))
            let status = try await fixture.driver.start(name: name)
            try HalfDoneJobRecoveryTests.writeJob(fixture, name, .save, file: image)
            let recoveries = await fixture.driver.recoverInterruptedJobs()
            #expect(recoveries.map(\.action) == ["the save had completed; stopped QEMU"])
            #expect(try fixture.driver.state(of: name).0 == .shutoff)
            #expect(!QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket).isAlive)
            #expect(try SaveImage.read(path: image).isComplete)
        }
    }

    @Test("a save killed before its image was complete resumes the guest and leaves the image refused as incomplete")
    func saveNotCommitted() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "uncommitted"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: FaultTests.cpu))
            let status = try await fixture.driver.start(name: name)
            try await fixture.driver.setPaused(name: name, true)
            // What the save leaves: its status still says running, QEMU is stopped.
            var recorded = status
            recorded.state = .running
            try fixture.driver.store.save(recorded)
            let image = fixture.directory.appendingPathComponent("partial.img").path
            var bytes = [UInt8](repeating: 0, count: 128)
            bytes.replaceSubrange(0..<16, with: Array("LibvirtQemudPart".utf8))
            try Data(bytes).write(to: URL(fileURLWithPath: image))
            try HalfDoneJobRecoveryTests.writeJob(fixture, name, .save, file: image)
            let recoveries = await fixture.driver.recoverInterruptedJobs()
            #expect(recoveries.map(\.action) == ["cancelled the save and resumed the guest"])
            #expect(try fixture.driver.state(of: name).0 == .running)
            #expect(throws: SaveImageError.self) { try SaveImage.read(path: image) }
        }
    }

    @Test("a recorded state that differs from QEMU's own (a start or resume killed before recording it) is corrected")
    func runState() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let name = "drift"
            try await fixture.driver.define(xml: fixture.domainXML(name: name, cpu: FaultTests.cpu))
            var status = try await fixture.driver.start(name: name)
            status.state = .paused
            try fixture.driver.store.save(status)
            #expect(try fixture.driver.state(of: name).0 == .paused)
            let recoveries = await fixture.driver.reconcileRunStates()
            #expect(recoveries.map(\.action) == ["recorded it running as QEMU is (it was recorded paused)"])
            #expect(try fixture.driver.state(of: name).0 == .running)
            #expect(await fixture.driver.reconcileRunStates().isEmpty, "nothing left to correct")
        }
    }
}
