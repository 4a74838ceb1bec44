import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage
import KeelXML

/// The driver in this process, on a state directory. QEMU processes outlive the command; later
/// commands (and keeld) find them through the state directory.
///
/// Domain names are checked before anything else, as keeld checks them, so that a bad name
/// gets the same answer in both modes (and never becomes a path).
struct EmbeddedBackend: Backend {
    let driver: Driver

    var location: String { "embedded on \(driver.store.root)" }

    func define(xml: String) async throws -> DomainDefinition {
        try await driver.define(xml: xml)
    }

    func start(name: String, paused: Bool) async throws -> StartedDomain {
        try DomainStore.validate(name: name)
        let status = try await driver.start(name: name, paused: paused)
        return StartedDomain(state: status.state.rawValue, pid: status.pid, cpu: status.live.cpu?.formatted(), originalCPU: status.originalCPU?.formatted())
    }

    func list() async throws -> [ListedDomain] {
        // A `keel` killed mid-save left its guest paused: finish that job first.
        await driver.recoverInterruptedJobs()
        return try driver.list().map {
            ListedDomain(name: $0.name, uuid: $0.uuid, state: $0.state, persistent: $0.persistent, pid: $0.pid,
                         managedSave: driver.hasManagedSave(name: $0.name))
        }
    }

    func info(name: String) async throws -> DomainDetails {
        try DomainStore.validate(name: name)
        let (state, status) = try driver.state(of: name)
        let definition = try driver.xml(name: name)
        return DomainDetails(
            state: state, reason: status?.reason, pid: status?.pid, definition: definition, originalCPU: status?.originalCPU?.formatted(),
            autostart: driver.isAutostart(name: name), managedSave: driver.hasManagedSave(name: name)
        )
    }

    func xml(name: String, inactive: Bool, migratable: Bool) async throws -> String {
        try DomainStore.validate(name: name)
        return try driver.xml(name: name, inactive: inactive, migratable: migratable).formatted()
    }

    func destroy(name: String) async throws {
        try DomainStore.validate(name: name)
        try await driver.destroy(name: name)
    }

    func undefine(name: String) async throws {
        try DomainStore.validate(name: name)
        try driver.undefine(name: name)
    }

    func setPaused(name: String, _ paused: Bool) async throws {
        try DomainStore.validate(name: name)
        try await driver.setPaused(name: name, paused)
    }

    func shutdown(name: String, timeout: Duration) async throws {
        try DomainStore.validate(name: name)
        try await driver.shutdown(name: name, timeout: timeout)
    }

    func reboot(name: String) async throws {
        try DomainStore.validate(name: name)
        try await driver.reboot(name: name)
    }

    func save(name: String, file: String, running: Bool?, compression: SaveImageCompression) async throws {
        try DomainStore.validate(name: name)
        try await driver.save(name: name, to: file, running: running, compression: compression)
    }

    func restore(file: String, running: Bool?, xml: String?) async throws -> RestoredDomain {
        let status = try await driver.restore(path: file, running: running, xml: xml)
        return RestoredDomain(name: status.live.name, state: status.state.rawValue)
    }

    func planRestore(file: String, xml: String?) async throws -> RestoreVerdict {
        let plan = try await driver.planRestore(path: file, xml: xml)
        return RestoreVerdict(domain: plan.definition.name, verdict: plan.verdict, cpu: plan.targetCPU?.formatted())
    }

    func managedSave(name: String, running: Bool?) async throws -> String {
        try DomainStore.validate(name: name)
        try await driver.managedSave(name: name, running: running)
        return driver.store.managedSavePath(name)
    }

    func removeManagedSave(name: String) async throws -> Bool {
        try DomainStore.validate(name: name)
        return try driver.removeManagedSave(name: name)
    }

    func managedSaveXML(name: String) async throws -> String {
        try DomainStore.validate(name: name)
        return try driver.managedSaveXML(name: name)
    }

    func managedSaveDefine(name: String, xml: String, running: Bool?) async throws -> Bool {
        try DomainStore.validate(name: name)
        return try driver.managedSaveDefine(name: name, xml: xml, running: running)
    }

    func setAutostart(name: String, _ enabled: Bool) async throws {
        try DomainStore.validate(name: name)
        try driver.setAutostart(name: name, enabled)
    }

    func jobInfo(name: String) async throws -> DomainJob? {
        try DomainStore.validate(name: name)
        return try driver.jobInfo(name: name)
    }

    func abortJob(name: String) async throws -> DomainJob {
        try DomainStore.validate(name: name)
        return try await driver.abortJob(name: name)
    }

    func hostCapabilities() async throws -> CapabilitiesAnswer<HostCapabilities.Report> {
        let capabilities = try await HostProbe.host(driver: driver, emulator: driver.configuration.emulator)
        return CapabilitiesAnswer(xml: capabilities.xmlElement.formatted(), report: capabilities.report)
    }

    func domainCapabilities(virtType: String?, machine: String?, emulator: String?) async throws -> CapabilitiesAnswer<QEMUCapabilities.DomainReport> {
        let binary = emulator ?? driver.configuration.emulator
        let capabilities: QEMUCapabilities
        if let virtType, let accelerator = QEMUCapabilities.Accelerator(domainType: virtType) {
            capabilities = try await HostProbe.capabilities(driver: driver, emulator: binary, accelerator: accelerator)
        } else if let kvm = try await HostProbe.kvmIfAvailable(driver: driver, emulator: binary) {
            // virsh asks for the best type the host has.
            capabilities = kvm
        } else {
            capabilities = try await HostProbe.capabilities(driver: driver, emulator: binary, accelerator: .tcg)
        }
        let element = try capabilities.domainCapabilitiesXML(machine: machine, map: driver.map)
        return CapabilitiesAnswer(xml: element.formatted(), report: try capabilities.domainReport(machine: machine, map: driver.map))
    }

    func compareHypervisorCPU(_ cpu: CPUDefinition, virtType: String?, failIncompatible: Bool) async throws -> CPUComparison {
        try await driver.compareHypervisorCPU(cpu, virtType: virtType, failIncompatible: failIncompatible)
    }

    func baselineHypervisorCPU(_ cpus: [CPUDefinition], virtType: String?, expandFeatures: Bool, migratable: Bool) async throws -> CPUDefinition {
        try await driver.baselineHypervisorCPU(cpus, virtType: virtType, expandFeatures: expandFeatures, migratable: migratable)
    }
}
