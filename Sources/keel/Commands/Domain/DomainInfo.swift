import ArgumentParser
import KeelQEMU

/// `keel dominfo NAME`: basic information about a domain.
struct DomainInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dominfo", abstract: "Show basic information about a domain.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let info = try await driverCall { try await backend.info(name: name) }
        let definition = info.definition
        let cpu = definition.cpu
        if json {
            Output.print(JSON.object([
                ("name", .string(definition.name)), ("uuid", definition.uuid.map(JSON.string) ?? .null),
                ("state", .string(info.state.rawValue)), ("reason", info.reason.map(JSON.string) ?? .null),
                ("pid", info.pid.map { .int(Int($0)) } ?? .null), ("type", .string(definition.virtType)),
                ("memoryKiB", .int(Int(definition.memoryKiB))), ("vcpus", .int(Int(definition.vcpus))),
                ("machine", definition.os.machine.map(JSON.string) ?? .null),
                ("cpu", cpu.map { .string($0.formatted()) } ?? .null),
                ("originalCPU", info.originalCPU.map(JSON.string) ?? .null),
                ("autostart", .bool(info.autostart)), ("managedSave", .bool(info.managedSave)),
            ]).text + "\n")
            return
        }
        var lines = [
            ("Id", info.pid.map { String($0) } ?? "-"), ("Name", definition.name), ("UUID", definition.uuid ?? "-"),
            ("OS Type", definition.os.type),
            ("State", info.state == .shutoff ? "shut off" : info.state.rawValue + (info.reason.map { " (\($0))" } ?? "")),
            ("CPU(s)", String(definition.vcpus)), ("Max memory", "\(definition.memoryKiB) KiB"),
            ("Machine", definition.os.machine ?? "-"), ("Type", definition.virtType),
            ("Autostart", info.autostart ? "enable" : "disable"),
            ("Managed save", info.managedSave ? "yes" : "no"),
        ]
        if let cpu { lines.append(("CPU model", "\(cpu.model ?? cpu.mode?.rawValue ?? "-") (check \(cpu.check.rawValue))")) }
        if info.originalCPU != nil { lines.append(("CPU updated", "yes (QEMU changed the requested CPU; see dumpxml --migratable)")) }
        Output.print(lines.map { ($0.0 + ":").padding(16) + $0.1 }.joined(separator: "\n") + "\n\n")
    }
}
