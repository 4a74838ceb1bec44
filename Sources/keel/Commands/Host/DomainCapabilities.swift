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
        let driver = try options.driver()
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
        let element: XMLElement
        do {
            element = try capabilities.domainCapabilitiesXML(machine: machine, map: driver.map)
        } catch let error as QEMUError {
            throw CommandFailure(message: error.message)
        }
        if json {
            Output.print(Self.json(capabilities, machine: element.child("machine")?.text ?? "", map: driver.map).text + "\n")
        } else {
            Output.print(element.formatted())
        }
    }

    static func json(_ capabilities: QEMUCapabilities, machine: String, map: CPUMap) -> JSON {
        var hostModel: [(String, JSON)] = [("supported", .bool(capabilities.hostModel != nil))]
        if let cpu = capabilities.hostModel {
            hostModel += [
                ("model", cpu.model.map(JSON.string) ?? .null), ("fallback", .string(cpu.fallback.rawValue)),
                ("vendor", cpu.vendor.map(JSON.string) ?? .null),
                ("features", .array(cpu.features.map { .object([("name", .string($0.name)), ("policy", .string($0.effectivePolicy.rawValue))]) })),
            ]
        }
        let custom = capabilities.customModels(map: map).map { model -> JSON in
            .object([
                ("name", .string(model.name)), ("usable", .bool(model.isUsable)), ("deprecated", .bool(model.isDeprecated)),
                ("vendor", .string(map.model(named: model.name)?.vendor ?? "unknown")),
                ("blockers", .array(model.unavailableFeatures.map(JSON.string))),
            ])
        }
        let maxCPUs = capabilities.machines.first { $0.name == machine }?.maxCPUs
        return .object([
            ("path", .string(capabilities.binary)), ("domain", .string(capabilities.accelerator.domainType)),
            ("machine", .string(machine)), ("arch", .string("x86_64")), ("version", .string(capabilities.version)),
            ("vcpuMax", maxCPUs.map { .int($0) } ?? .null),
            ("cpu", .object([
                ("hostPassthrough", .object([("supported", .bool(capabilities.supports(.hostPassthrough, map: map)))])),
                ("maximum", .object([("supported", .bool(capabilities.supports(.maximum, map: map)))])),
                ("hostModel", .object(hostModel)),
                ("custom", .array(custom)),
            ])),
            ("forcedFeatures", .array(capabilities.forcedFeatures.map(JSON.string))),
            ("unmigratableFeatures", .array(capabilities.unmigratableFeatures.map(JSON.string))),
        ])
    }
}
