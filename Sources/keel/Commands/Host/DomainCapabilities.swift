import ArgumentParser
import KeelCPU
import KeelQEMU
import KeelXML

/// `keel domcapabilities`: what a domain of one type may ask for, as `virsh domcapabilities`
/// shows it.
struct DomainCapabilities: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domcapabilities",
        abstract: "Show the CPU modes and models a domain can use (libvirt's domainCapabilities XML)."
    )

    @OptionGroup var options: DriverOptions
    @Option(name: .customLong("virttype"), help: "The domain type: kvm or qemu (default: kvm when /dev/kvm works, else qemu).")
    var virtType: String?
    @Option(help: "The QEMU binary (default: the host configuration's emulator).") var emulator: String?
    @Option(help: "The machine type (default: QEMU's default machine).") var machine: String?
    @Option(help: "The architecture; only x86_64 is supported.") var arch: String?
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if let virtType, QEMUCapabilities.Accelerator(domainType: virtType) == nil {
            throw ValidationError("unknown virttype '\(virtType)': use kvm or qemu")
        }
        if let arch, arch != "x86_64" {
            throw ValidationError("architecture '\(arch)' is not supported: only x86_64")
        }
    }

    func run() async throws {
        let backend = try options.backend()
        let capabilities = try await driverCall {
            try await backend.domainCapabilities(virtType: virtType, machine: machine, emulator: emulator)
        }
        if json {
            Output.print(Self.json(capabilities.report).text + "\n")
        } else {
            Output.print(capabilities.xml)
        }
    }

    static func json(_ report: QEMUCapabilities.DomainReport) -> JSON {
        var hostModel: [(String, JSON)] = [("supported", .bool(report.hostModel != nil))]
        if let cpu = report.hostModel {
            hostModel += [
                ("model", cpu.model.map(JSON.string) ?? .null), ("fallback", .string(cpu.fallback)),
                ("vendor", cpu.vendor.map(JSON.string) ?? .null),
                ("features", .array(cpu.features.map { .object([("name", .string($0.name)), ("policy", .string($0.policy))]) })),
            ]
        }
        let custom = report.custom.map { model -> JSON in
            .object([
                ("name", .string(model.name)), ("usable", .bool(model.usable)), ("deprecated", .bool(model.deprecated)),
                ("vendor", .string(model.vendor)), ("blockers", .array(model.blockers.map(JSON.string))),
            ])
        }
        return .object([
            ("path", .string(report.path)), ("domain", .string(report.domain)),
            ("machine", .string(report.machine)), ("arch", .string("x86_64")), ("version", .string(report.version)),
            ("vcpuMax", report.vcpuMax.map { .int($0) } ?? .null),
            ("cpu", .object([
                ("hostPassthrough", .object([("supported", .bool(report.hostPassthrough))])),
                ("maximum", .object([("supported", .bool(report.maximum))])),
                ("hostModel", .object(hostModel)),
                ("custom", .array(custom)),
            ])),
            ("forcedFeatures", .array(report.forcedFeatures.map(JSON.string))),
            ("unmigratableFeatures", .array(report.unmigratableFeatures.map(JSON.string))),
        ])
    }
}
