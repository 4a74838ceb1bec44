import Foundation
import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import KeelXML
import Testing

/// Shutdown, reboot, managed save, autostart, jobs and the hypervisor CPU queries, end to end
/// on the test guest under TCG.
@Suite("QEMU driver: lifecycle verbs, managed save, autostart and jobs", .serialized)
struct LifecycleTests {
    static let cpu = "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"

    /// Defines and starts a guest and waits for its first CPUID block (it has booted).
    @discardableResult
    func boot(_ fixture: DriverFixture, _ name: String, memoryMiB: Int = 16, cmdline: String = "") async throws -> DomainStatus {
        try await fixture.driver.define(xml: fixture.domainXML(name: name, memoryMiB: memoryMiB, cpu: Self.cpu, cmdline: cmdline))
        let status = try await fixture.driver.start(name: name)
        _ = try await fixture.cpuidBlock(name)
        return status
    }

    func serial(_ fixture: DriverFixture, _ name: String, after offset: Int = 0) -> String {
        guard let data = FileManager.default.contents(atPath: fixture.serialPath(name)), data.count > offset else { return "" }
        return String(decoding: data[offset...], as: UTF8.self)
    }

    /// Waits until the serial output after `offset` satisfies `condition`.
    func waitForSerial(_ fixture: DriverFixture, _ name: String, after offset: Int = 0, timeout: Duration = .seconds(30),
                       _ condition: (String) -> Bool) async throws -> Bool {
        let limit = ContinuousClock.now + timeout
        while ContinuousClock.now < limit {
            if condition(serial(fixture, name, after: offset)) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    func code<T>(_ body: () async throws -> T) async -> QEMUError.Code? {
        do {
            _ = try await body()
            return nil
        } catch let error as QEMUError {
            return error.code
        } catch {
            return QEMUError.Code(rawValue: "other: \(error)")
        }
    }

    @Test("shutdown of a guest that ignores ACPI times out with a clear error and leaves it running; a guest that exits ends the wait")
    func shutdown() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            let started = try await boot(fixture, "sd")
            do {
                try await driver.shutdown(name: "sd", timeout: .seconds(1))
                Issue.record("shutdown of a guest without ACPI handling succeeded")
            } catch let error as QEMUError {
                #expect(error.code == .timeout)
                #expect(error.message == "domain 'sd' did not shut down within 1 s")
            }
            #expect(try driver.state(of: "sd").0 == .running, "never a kill")
            #expect(kill(started.pid, 0) == 0, "QEMU is alive")

            // The success path: the QEMU exits (here because another task destroys it) while
            // shutdown waits; the wait does not hold the job lock.
            async let waited: Void = driver.shutdown(name: "sd", timeout: .seconds(30))
            try await Task.sleep(for: .milliseconds(500))
            try await driver.destroy(name: "sd")
            try await waited
            #expect(try driver.state(of: "sd").0 == .shutoff)

            #expect(await code { try await driver.shutdown(name: "sd") } == .invalidState)
            #expect(await code { try await driver.shutdown(name: "nope") } == .notFound)
            #expect(await code { try await driver.shutdown(name: "../sd") } == .invalidArgument, "names become paths")
            #expect(await code { try driver.removeManagedSave(name: "../sd") } == .invalidArgument)
        }
    }

    @Test("reboot resets the guest: it prints its banner again and sees the same CPU")
    func reboot() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            try await boot(fixture, "rb")
            let before = try await fixture.cpuidBlock("rb")
            let offset = fixture.serialSize("rb")
            try await driver.reboot(name: "rb")
            #expect(try await waitForSerial(fixture, "rb", after: offset) { $0.contains("KEEL-GUEST 1") }, "the guest booted again")
            #expect(try await fixture.cpuidBlock("rb", after: offset) == before)
            #expect(try driver.state(of: "rb").0 == .running)
            try await driver.destroy(name: "rb")
            #expect(await code { try await driver.reboot(name: "rb") } == .invalidState)
            #expect(await code { try await driver.reboot(name: "nope") } == .notFound)
        }
    }

    @Test("managedsave stops the guest into STATE/save/NAME.save; start restores it (not a reboot) and removes the image")
    func managedSave() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            let started = try await boot(fixture, "ms")
            #expect(try await waitForSerial(fixture, "ms") { $0.contains("TICK 2") })
            #expect(!driver.hasManagedSave(name: "ms"))
            try await driver.managedSave(name: "ms")
            #expect(try driver.state(of: "ms").0 == .shutoff)
            let path = driver.store.managedSavePath("ms")
            #expect(path.hasSuffix("/save/ms.save"))
            #expect(driver.hasManagedSave(name: "ms"))
            let info = try SaveImage.read(path: path)
            #expect(info.isComplete && info.header.wasRunning)

            // dumpxml: the stored XML; define: host-side changes pass, ABI changes do not.
            let xml = try driver.managedSaveXML(name: "ms")
            #expect(try DomainDefinition(xmlString: xml).name == "ms")
            #expect(try driver.managedSaveDefine(name: "ms", xml: xml) == false, "identical XML: nothing to do")
            let described = xml.replacingOccurrences(of: "</name>", with: "</name>\n  <description>managed</description>")
            #expect(try driver.managedSaveDefine(name: "ms", xml: described) == true)
            #expect(try driver.managedSaveXML(name: "ms").contains("<description>managed</description>"))
            let moreCPUs = xml.replacingOccurrences(of: "<vcpu>1</vcpu>", with: "<vcpu>2</vcpu>")
                .replacingOccurrences(of: "<vcpu placement='static'>1</vcpu>", with: "<vcpu placement='static'>2</vcpu>")
            #expect(moreCPUs != xml)
            do {
                try driver.managedSaveDefine(name: "ms", xml: moreCPUs)
                Issue.record("an ABI change was accepted")
            } catch let error as QEMUError {
                #expect(error.message.hasPrefix("unsupported configuration: "), "\(error.message)")
            }

            let offset = fixture.serialSize("ms")
            let restored = try await driver.start(name: "ms")
            #expect(restored.reason == "restored")
            #expect(restored.live.cpu == started.live.cpu)
            #expect(!driver.hasManagedSave(name: "ms"), "the image is removed after the restore")
            #expect(try await waitForSerial(fixture, "ms", after: offset) { $0.contains("TICK") })
            #expect(!serial(fixture, "ms", after: offset).contains("KEEL-GUEST"), "restored, not booted")

            // --paused at save time: the restore leaves the guest paused.
            try await driver.managedSave(name: "ms", running: false)
            #expect(try SaveImage.read(path: path).header.wasRunning == false)
            #expect(try await driver.start(name: "ms").state == .paused)
            try await driver.destroy(name: "ms")
        }
    }

    @Test("an incomplete managed-save image is removed and the guest boots fresh; a corrupt one is kept and reported")
    func managedSaveBadImages() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            try await driver.define(xml: fixture.domainXML(name: "bad", cpu: Self.cpu))
            let path = driver.store.managedSavePath("bad")
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)

            #expect(await code { try driver.managedSaveXML(name: "bad") } == .notFound)
            #expect(try driver.removeManagedSave(name: "bad") == false)
            #expect(await code { try await driver.managedSave(name: "bad") } == .invalidState, "not running")

            // A writer that died: the Part magic.
            try Data(SaveImageHeader.partialMagic + [UInt8](repeating: 0, count: 76)).write(to: URL(fileURLWithPath: path))
            #expect(await code { try driver.managedSaveXML(name: "bad") } == .invalidArgument)
            let booted = try await driver.start(name: "bad")
            #expect(booted.reason == "booted")
            #expect(!driver.hasManagedSave(name: "bad"))
            try await driver.destroy(name: "bad")

            // A complete header with garbage behind it: the restore fails and the image stays.
            let garbage = Data(Array("LibvirtQemudSave".utf8) + [UInt8](repeating: 0xff, count: 200))
            try garbage.write(to: URL(fileURLWithPath: path))
            #expect(await code { try await driver.start(name: "bad") } != nil)
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == garbage, "kept untouched")
            #expect(try driver.state(of: "bad").0 == .shutoff)
            #expect(try driver.removeManagedSave(name: "bad") == true)
            #expect(!driver.hasManagedSave(name: "bad"))

            for call: () async throws -> Void in [
                { try await driver.managedSave(name: "nope") }, { _ = try driver.managedSaveXML(name: "nope") },
                { try driver.removeManagedSave(name: "nope") }, { try driver.managedSaveDefine(name: "nope", xml: "<domain/>") },
            ] {
                #expect(await code(call) == .notFound)
            }
        }
    }

    @Test("autostartAll starts the marked, defined, stopped domains and nothing else")
    func autostart() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            try await driver.define(xml: fixture.domainXML(name: "auto", cpu: Self.cpu))
            try await driver.define(xml: fixture.domainXML(name: "manual", cpu: Self.cpu))
            try driver.setAutostart(name: "auto", true)
            #expect(driver.isAutostart(name: "auto"))
            #expect(!driver.isAutostart(name: "manual"))
            #expect(FileManager.default.fileExists(atPath: driver.store.autostartPath("auto")))

            let outcomes = await driver.autostartAll()
            #expect(outcomes.map(\.name) == ["auto"])
            #expect(outcomes.allSatisfy { $0.error == nil })
            #expect(try driver.state(of: "auto").0 == .running)
            #expect(try driver.state(of: "manual").0 == .shutoff)
            #expect(await driver.autostartAll().isEmpty, "a running domain is left alone")

            try await driver.destroy(name: "auto")
            try driver.setAutostart(name: "auto", false)
            #expect(!driver.isAutostart(name: "auto"))
            #expect(await driver.autostartAll().isEmpty)
            #expect(await code { try driver.setAutostart(name: "nope", true) } == .notFound)
        }
    }

    @Test("domjobinfo sees a save from outside it; domjobabort cancels it: the guest runs on and no image remains")
    func jobAbort() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            try await boot(fixture, "job", memoryMiB: 320, cmdline: "fill=256")
            #expect(try await waitForSerial(fixture, "job", timeout: .seconds(60)) { $0.contains("FILLED 256") })
            #expect(try driver.jobInfo(name: "job") == nil)
            #expect(await code { try await driver.abortJob(name: "job") } == .invalidState, "no job")

            let image = fixture.directory.appendingPathComponent("job.save").path
            let save = Task { try await driver.save(name: "job", to: image) }
            var seen: DomainJob?
            let limit = ContinuousClock.now + .seconds(20)
            while seen == nil && ContinuousClock.now < limit {
                seen = try driver.jobInfo(name: "job")
                if seen == nil { try await Task.sleep(for: .milliseconds(1)) }
            }
            let job = try #require(seen, "the save's job record appears")
            #expect(job.operation == .save)
            #expect(job.pid == getpid())
            let last = try await driver.abortJob(name: "job")
            #expect(last.operation == .save)
            do {
                try await save.value
                Issue.record("the save completed despite the abort")
            } catch let error as QEMUError {
                #expect(error.code == .aborted, "\(error.message)")
            }
            #expect(!FileManager.default.fileExists(atPath: image), "the image is discarded")
            #expect(try driver.state(of: "job").0 == .running)
            #expect(try driver.jobInfo(name: "job") == nil)
            let offset = fixture.serialSize("job")
            #expect(try await waitForSerial(fixture, "job", after: offset) { $0.contains("TICK") }, "the guest runs on")
            try await driver.destroy(name: "job")
            #expect(await code { try driver.jobInfo(name: "nope") } == .notFound)
        }
    }

    @Test("a job record survives the XML round trip")
    func jobRecord() throws {
        let job = DomainJob(operation: .save, pid: 42, startedMilliseconds: 1_000, updatedMilliseconds: 1_500, status: "active",
                            dataTotal: 300 << 20, dataProcessed: 100 << 20, dataRemaining: 200 << 20, memoryBandwidth: 1 << 30)
        #expect(try DomainJob(xml: XMLParser.parse(job.xmlElement.formatted())) == job)
        let sparse = DomainJob(operation: .restore, pid: 7, startedMilliseconds: 5, updatedMilliseconds: 5, status: "setup")
        #expect(try DomainJob(xml: XMLParser.parse(sparse.xmlElement.formatted())) == sparse)
        #expect(job.elapsedMilliseconds(now: 3_000) == 2_000)
        #expect(throws: QEMUError.self) { try DomainJob(xml: XMLParser.parse("<job operation='dance' pid='1' started='1'/>")) }
    }

    @Test("hypervisor CPU compare and baseline judge against what QEMU provides under TCG")
    func hypervisorCPU() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        try await DriverFixture.with { fixture in
            let driver = fixture.driver
            let qemu64 = try CPUDefinition(xmlString: "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>", as: .auto)
            let comparison = try await driver.compareHypervisorCPU(qemu64, virtType: "qemu")
            #expect(comparison.result != .incompatible, "\(comparison.message ?? "")")

            // TCG in QEMU 7.2 cannot provide x2apic.
            let x2apic = try CPUDefinition(xmlString: "<cpu mode='custom' match='exact'><model>qemu64</model><feature policy='require' name='x2apic'/></cpu>", as: .auto)
            let refused = try await driver.compareHypervisorCPU(x2apic, virtType: "qemu")
            #expect(refused.result == .incompatible)
            do {
                _ = try await driver.compareHypervisorCPU(x2apic, virtType: "qemu", failIncompatible: true)
                Issue.record("--error did not fail")
            } catch let error as QEMUError {
                #expect(error.code == .incompatibleCPU)
                #expect(error.message.hasPrefix("the CPU is incompatible with host CPU: "))
                #expect(error.features.contains { $0.name == "x2apic" })
            }

            let baseline = try await driver.baselineHypervisorCPU([x2apic], virtType: "qemu")
            #expect(baseline.fallback == .forbid)
            #expect(!baseline.features.contains { $0.name == "x2apic" && $0.effectivePolicy == .require }, "only what TCG can enable")
            #expect(try await driver.compareHypervisorCPU(baseline, virtType: "qemu").result != .incompatible, "QEMU can run the baseline")
            let expanded = try await driver.baselineHypervisorCPU([qemu64], virtType: "qemu", expandFeatures: true, migratable: true)
            #expect(expanded.features.count > baseline.features.count)
            #expect(await code { try await driver.compareHypervisorCPU(qemu64, virtType: "xen") } == .invalidArgument)
        }
    }

    @Test("the CLI verbs print virsh's wording or JSON and fail with one-line errors")
    func commandLine() async throws {
        if let reason = DriverFixture.unavailableReason { print("SKIP: \(reason)"); return }
        guard let keel = InteropTests.keel else { print("SKIP: no keel binary beside the test bundle (build with --build-tests)"); return }
        try await DriverFixture.with { fixture in
            let state = fixture.driver.store.root
            func keelRun(_ arguments: String...) throws -> (status: Int32, stdout: String, stderr: String) {
                try run(keel, arguments + ["--state", state])
            }
            func expectError(_ result: (status: Int32, stdout: String, stderr: String), _ message: String, status: Int32 = 1) {
                #expect(result.status == status)
                #expect(result.stderr == "error: \(message)\n")
            }
            try await boot(fixture, "cli")
            #expect(try keelRun("domjobinfo", "cli").stdout.hasPrefix("Job type:         None"))
            #expect(try keelRun("domjobinfo", "cli", "--json").stdout == "{\"type\": \"none\"}\n")
            expectError(try keelRun("domjobabort", "cli"), "no job is active on domain 'cli'")
            expectError(try keelRun("shutdown", "cli", "--timeout", "0.5"), "domain 'cli' did not shut down within 0.5 s")
            #expect(try keelRun("reboot", "cli", "--json").stdout == "{\"name\": \"cli\", \"rebooted\": true}\n")
            #expect(try keelRun("autostart", "cli").stdout == "Domain 'cli' marked as autostarted\n")
            #expect(try keelRun("dominfo", "cli", "--json").stdout.contains("\"autostart\": true, \"managedSave\": false"))

            let saved = try keelRun("managedsave", "cli", "--paused", "--json")
            #expect(saved.status == 0, "\(saved.stderr)")
            #expect(saved.stdout.contains("/save/cli.save"))
            #expect(try keelRun("list", "--all", "--managed-save").stdout.contains("cli                  saved"))
            #expect(try keelRun("dominfo", "cli").stdout.contains("Managed save:   yes"))
            let xml = try keelRun("managedsave-dumpxml", "cli").stdout
            #expect(xml.hasPrefix("<domain type='qemu'>"))
            let xmlFile = fixture.directory.appendingPathComponent("cli-managed.xml")
            try xml.write(to: xmlFile, atomically: true, encoding: .utf8)
            #expect(try keelRun("managedsave-define", "cli", xmlFile.path, "--running").stdout == "Managed save state file of domain 'cli' updated.\n")
            #expect(try keelRun("managedsave-remove", "cli").stdout == "Removed managedsave image for domain 'cli'\n")
            expectError(try keelRun("managedsave-dumpxml", "cli"), "domain 'cli' does not have managed save image")
            expectError(try keelRun("managedsave", "cli"), "domain 'cli' is not running")
            expectError(try keelRun("shutdown", "nope"), "domain 'nope' not found")
            expectError(try keelRun("managedsave", "cli", "--running", "--paused"), "--running and --paused are mutually exclusive")

            let plain = fixture.directory.appendingPathComponent("qemu64.xml").path
            let x2apic = fixture.directory.appendingPathComponent("x2apic.xml").path
            try "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>".write(toFile: plain, atomically: true, encoding: .utf8)
            try "<cpu mode='custom' match='exact'><model>qemu64</model><feature policy='require' name='x2apic'/></cpu>".write(toFile: x2apic, atomically: true, encoding: .utf8)
            #expect(try keelRun("hypervisor-cpu-compare", plain, "--virttype", "qemu").stdout
                == "The CPU provided by hypervisor on the host is a superset of CPU described in \(plain)\n")
            let incompatible = try keelRun("hypervisor-cpu-compare", x2apic, "--virttype", "qemu")
            #expect(incompatible.status == 1)
            #expect(incompatible.stdout == "CPU described in \(x2apic) is incompatible with the CPU provided by hypervisor on the host\n")
            expectError(try keelRun("hypervisor-cpu-compare", x2apic, "--virttype", "qemu", "--error"),
                        "the CPU is incompatible with host CPU: Host CPU does not provide required features: x2apic", status: 2)
            let baseline = try keelRun("hypervisor-cpu-baseline", x2apic, "--virttype", "qemu", "--json")
            #expect(baseline.status == 0, "\(baseline.stderr)")
            #expect(baseline.stdout.contains("\"fallback\": \"forbid\""))
        }
    }
}
