import ArgumentParser
import KeelCPU
import KeelQEMU

/// `keel capabilities`: the host and the guests it can run, as `virsh capabilities` shows them.
struct Capabilities: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "capabilities",
        abstract: "Show the host's CPU and the guest types it can run (libvirt's capabilities XML).",
        discussion: """
            QEMU is probed under TCG and, when /dev/kvm can be opened, KVM; results are cached in \
            STATE/cache/capabilities until the QEMU binary changes. The host CPU is what KVM can \
            offer a guest, decoded on the CPU map.
            """
    )

    @OptionGroup var options: DriverOptions
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let capabilities = try await driverCall { try await backend.hostCapabilities() }
        if json {
            Output.print(Self.json(capabilities.report).text + "\n")
        } else {
            Output.print(capabilities.xml)
        }
    }

    static func json(_ report: HostCapabilities.Report) -> JSON {
        var cpu: [(String, JSON)] = [("arch", .string("x86_64"))]
        if let hostCPU = report.hostCPU {
            cpu.append(("model", hostCPU.model.map(JSON.string) ?? .null))
            cpu.append(("vendor", hostCPU.vendor.map(JSON.string) ?? .null))
            if let signature = hostCPU.signature {
                cpu.append(("signature", .object([
                    ("family", .int(Int(signature.family))), ("model", .int(Int(signature.model))), ("stepping", .int(Int(signature.stepping))),
                ])))
            }
            cpu.append(("features", .array(hostCPU.features.map(JSON.string))))
        }
        let machines = report.machines.map { machine -> JSON in
            .object([
                ("name", .string(machine.name)), ("canonical", machine.canonical.map(JSON.string) ?? .null),
                ("maxCpus", machine.maxCPUs.map { .int($0) } ?? .null), ("default", .bool(machine.isDefault)),
            ])
        }
        return .object([
            ("host", .object([("uuid", report.hostUUID.map(JSON.string) ?? .null), ("cpu", .object(cpu))])),
            ("guests", .array([.object([
                ("osType", .string("hvm")), ("arch", .string("x86_64")), ("wordsize", .int(64)),
                ("emulator", report.emulator.map(JSON.string) ?? .null),
                ("machines", .array(machines)),
                ("domains", .array(report.domainTypes.map(JSON.string))),
            ])])),
        ])
    }
}

/// Probing for the host commands, with errors as one-line command failures.
enum HostProbe {
    /// The capabilities of `emulator` under `accelerator`, from the driver's cache.
    static func capabilities(driver: Driver, emulator: String, accelerator: QEMUCapabilities.Accelerator) async throws -> QEMUCapabilities {
        do {
            return try await CapabilitiesProbe.capabilities(
                binary: emulator, accelerator: accelerator, cacheDirectory: driver.store.capabilitiesCache, map: driver.map
            )
        } catch let error as QEMUError {
            throw CommandFailure(message: error.message)
        }
    }

    /// KVM's capabilities, or nil when KVM is not usable here.
    static func kvmIfAvailable(driver: Driver, emulator: String) async throws -> QEMUCapabilities? {
        do {
            return try await CapabilitiesProbe.capabilities(
                binary: emulator, accelerator: .kvm, cacheDirectory: driver.store.capabilitiesCache, map: driver.map
            )
        } catch let error as QEMUError where error.code == .unsupported {
            return nil
        } catch let error as QEMUError {
            throw CommandFailure(message: error.message)
        }
    }

    /// TCG always, KVM when it is usable.
    static func host(driver: Driver, emulator: String) async throws -> HostCapabilities {
        let tcg = try await capabilities(driver: driver, emulator: emulator, accelerator: .tcg)
        let kvm = try await kvmIfAvailable(driver: driver, emulator: emulator)
        return HostCapabilities(
            hostUUID: HostCapabilities.hostUUID(stateDirectory: driver.store.root),
            hostCPU: kvm?.hostCPU(map: driver.map),
            guests: [tcg] + (kvm.map { [$0] } ?? [])
        )
    }
}
