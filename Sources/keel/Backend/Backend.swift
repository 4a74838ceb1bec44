import KeelCPU
import KeelDomain
import KeelQEMU
import KeelSaveImage

/// Where the driver verbs run: in this process on a state directory (`EmbeddedBackend`) or in
/// `keeld` over its socket (`DaemonBackend`).
///
/// Both answer in the driver's own types — `DomainDefinition`, `DomainJob`, `CPUVerdict`,
/// `CPUComparison` — and fail with the driver's `QEMUError`, rebuilt from the API's error body
/// (code, message, every CPU feature with its bits) in client mode, so the commands render one
/// set of values the same way whichever process did the work.
protocol Backend: Sendable {
    /// "embedded on DIR" or "keeld at PATH", for messages.
    var location: String { get }

    /// Defines a domain; returns the stored definition (machine type expanded).
    func define(xml: String) async throws -> DomainDefinition
    func start(name: String, paused: Bool) async throws -> StartedDomain
    func list() async throws -> [ListedDomain]
    func info(name: String) async throws -> DomainDetails
    /// The domain XML, formatted.
    func xml(name: String, inactive: Bool, migratable: Bool) async throws -> String
    func destroy(name: String) async throws
    func undefine(name: String) async throws
    func setPaused(name: String, _ paused: Bool) async throws
    func shutdown(name: String, timeout: Duration) async throws
    func reboot(name: String) async throws

    /// Saves to `file` (a path as the user gave it).
    func save(name: String, file: String, running: Bool?, compression: SaveImageCompression) async throws
    func restore(file: String, running: Bool?, xml: String?) async throws -> RestoredDomain
    func planRestore(file: String, xml: String?) async throws -> RestoreVerdict

    /// Saves to the managed-save image; returns its path.
    func managedSave(name: String, running: Bool?) async throws -> String
    func removeManagedSave(name: String) async throws -> Bool
    func managedSaveXML(name: String) async throws -> String
    func managedSaveDefine(name: String, xml: String, running: Bool?) async throws -> Bool
    func setAutostart(name: String, _ enabled: Bool) async throws

    func jobInfo(name: String) async throws -> DomainJob?
    func abortJob(name: String) async throws -> DomainJob

    func hostCapabilities() async throws -> CapabilitiesAnswer<HostCapabilities.Report>
    func domainCapabilities(virtType: String?, machine: String?, emulator: String?) async throws -> CapabilitiesAnswer<QEMUCapabilities.DomainReport>
    func compareHypervisorCPU(_ cpu: CPUDefinition, virtType: String?, failIncompatible: Bool) async throws -> CPUComparison
    func baselineHypervisorCPU(_ cpus: [CPUDefinition], virtType: String?, expandFeatures: Bool, migratable: Bool) async throws -> CPUDefinition
}

/// A started domain, as `start --json` shows it.
struct StartedDomain: Sendable {
    var state: String
    var pid: Int32
    /// The live (updated) CPU, formatted.
    var cpu: String?
    /// The CPU the user asked for, when QEMU changed it.
    var originalCPU: String?
}

/// A row of `list`.
struct ListedDomain: Sendable {
    var name: String
    var uuid: String?
    var state: Driver.State
    var persistent: Bool
    var pid: Int32?
    var managedSave: Bool
}

/// What `dominfo` shows.
struct DomainDetails: Sendable {
    var state: Driver.State
    /// Why it is in that state (`booted`, `restored`, …); nil when shut off.
    var reason: String?
    var pid: Int32?
    /// The domain XML: live (with the updated CPU) when running.
    var definition: DomainDefinition
    var originalCPU: String?
    var autostart: Bool
    var managedSave: Bool
}

struct RestoredDomain: Sendable {
    var name: String
    var state: String
}

/// `restore --dry-run`: whether this host can reproduce the image's CPU.
struct RestoreVerdict: Sendable {
    var domain: String
    var verdict: CPUVerdict
    /// The CPU the restore would start, formatted.
    var cpu: String?
}

/// A capabilities document: libvirt's XML and the same facts as data.
struct CapabilitiesAnswer<Report: Sendable>: Sendable {
    var xml: String
    var report: Report
}
