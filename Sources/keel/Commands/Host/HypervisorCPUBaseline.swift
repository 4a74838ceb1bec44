import ArgumentParser
import KeelCPU
import KeelQEMU

/// `keel hypervisor-cpu-baseline FILE`: the CPU QEMU can provide here that all given CPUs can run.
struct HypervisorCPUBaseline: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hypervisor-cpu-baseline",
        abstract: "Compute the baseline of the CPUs in an XML file, usable with QEMU on this host.",
        discussion: """
            As virsh hypervisor-cpu-baseline: only QEMU's CPU models for the virt type (with \
            their blockers) and the features QEMU can enable are used; the result has \
            fallback='forbid'. FILE may hold several <cpu> elements, capabilities or domain \
            capabilities XML.
            """
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "XML file with the CPUs.") var file: String
    @Option(name: .customLong("virttype"), help: "The virt type: kvm or qemu (default: kvm when /dev/kvm works, else qemu).")
    var virtType: String?
    @Flag(help: "Show all features of the baseline model explicitly.") var features = false
    @Flag(help: "Leave out features that block migration.") var migratable = false
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if let virtType, QEMUCapabilities.Accelerator(domainType: virtType) == nil {
            throw ValidationError("unknown virttype '\(virtType)': use kvm or qemu")
        }
    }

    func run() async throws {
        let cpus = try CPUInput.definitions(CPUInput.cpuElements(inFile: file), as: .auto, file: file)
        let backend = try options.backend()
        let baseline = try await driverCall {
            try await backend.baselineHypervisorCPU(cpus, virtType: virtType, expandFeatures: features, migratable: migratable)
        }
        let xml = baseline.formatted()
        if json {
            Output.print(JSON.object([
                ("cpu", .string(xml)), ("model", .string(baseline.model ?? "")),
                ("vendor", baseline.vendor.map(JSON.string) ?? .null), ("fallback", .string(baseline.fallback.rawValue)),
                ("features", .array(baseline.features.map {
                    .object([("name", .string($0.name)), ("policy", .string($0.effectivePolicy.rawValue))])
                })),
            ]).text + "\n")
        } else {
            Output.print(xml + "\n")
        }
    }
}
