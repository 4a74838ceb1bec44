import ArgumentParser
import KeelCPU
import KeelQEMU

/// `keel hypervisor-cpu-compare FILE`: compares a CPU with the CPU QEMU provides on this host.
struct HypervisorCPUCompare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hypervisor-cpu-compare",
        abstract: "Compare a CPU described in an XML file with the CPU QEMU provides on this host.",
        discussion: """
            As virsh hypervisor-cpu-compare: the CPU is compared with QEMU's host-model CPU for \
            the virt type (see domcapabilities). FILE may hold a bare <cpu>, a domain, \
            capabilities or domain capabilities XML; the first CPU found is compared. Exit \
            status: 0 identical or superset, 1 incompatible or error, 2 incompatible with --error.
            """
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "XML file with the CPU to compare.") var file: String
    @Option(name: .customLong("virttype"), help: "The virt type: kvm or qemu (default: kvm when /dev/kvm works, else qemu).")
    var virtType: String?
    @Flag(help: "Report an incompatible CPU as an error (exit 2) naming the offending features.") var error = false
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if let virtType, QEMUCapabilities.Accelerator(domainType: virtType) == nil {
            throw ValidationError("unknown virttype '\(virtType)': use kvm or qemu")
        }
    }

    func run() async throws {
        let cpu = try CPUInput.definitions(CPUInput.cpuElements(inFile: file), as: .auto, file: file)[0]
        let backend = try options.backend()
        let comparison: CPUComparison
        do {
            comparison = try await backend.compareHypervisorCPU(cpu, virtType: virtType, failIncompatible: error)
        } catch let failure as QEMUError {
            throw CommandFailure(message: failure.message, exitCode: failure.code == .incompatibleCPU ? 2 : 1)
        }
        if json {
            Output.print(CPUCompare.json(comparison).text + "\n")
        } else {
            switch comparison.result {
            case .incompatible:
                Output.print("CPU described in \(file) is incompatible with the CPU provided by hypervisor on the host\n")
            case .identical:
                Output.print("CPU described in \(file) is identical to the CPU provided by hypervisor on the host\n")
            case .superset:
                Output.print("The CPU provided by hypervisor on the host is a superset of CPU described in \(file)\n")
            }
        }
        if comparison.result == .incompatible {
            throw ExitCode(1)
        }
    }
}
