import ArgumentParser
import KeelQEMU

/// `keel dominfo NAME`: basic information about a domain.
struct DomainInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dominfo", abstract: "Show basic information about a domain.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let driver = try options.driver()
        let (state, status) = try await driverCall { try driver.state(of: name) }
        let definition = try await driverCall { try driver.xml(name: name) }
        let cpu = definition.cpu
        if json {
            Output.print(JSON.object([
                ("name", .string(definition.name)), ("uuid", definition.uuid.map(JSON.string) ?? .null),
                ("state", .string(state.rawValue)), ("reason", status.map { .string($0.reason) } ?? .null),
                ("pid", status.map { .int(Int($0.pid)) } ?? .null), ("type", .string(definition.virtType)),
                ("memoryKiB", .int(Int(definition.memoryKiB))), ("vcpus", .int(Int(definition.vcpus))),
                ("machine", definition.os.machine.map(JSON.string) ?? .null),
                ("cpu", cpu.map { .string($0.formatted()) } ?? .null),
                ("originalCPU", status?.originalCPU.map { .string($0.formatted()) } ?? .null),
                ("autostart", .bool(driver.isAutostart(name: name))), ("managedSave", .bool(driver.hasManagedSave(name: name))),
            ]).text + "\n")
            return
        }
        var lines = [
            ("Id", status.map { String($0.pid) } ?? "-"), ("Name", definition.name), ("UUID", definition.uuid ?? "-"),
            ("OS Type", definition.os.type), ("State", state == .shutoff ? "shut off" : state.rawValue + (status.map { " (\($0.reason))" } ?? "")),
            ("CPU(s)", String(definition.vcpus)), ("Max memory", "\(definition.memoryKiB) KiB"),
            ("Machine", definition.os.machine ?? "-"), ("Type", definition.virtType),
            ("Autostart", driver.isAutostart(name: name) ? "enable" : "disable"),
            ("Managed save", driver.hasManagedSave(name: name) ? "yes" : "no"),
        ]
        if let cpu { lines.append(("CPU model", "\(cpu.model ?? cpu.mode?.rawValue ?? "-") (check \(cpu.check.rawValue))")) }
        if status?.originalCPU != nil { lines.append(("CPU updated", "yes (QEMU changed the requested CPU; see dumpxml --migratable)")) }
        Output.print(lines.map { ($0.0 + ":").padding(16) + $0.1 }.joined(separator: "\n") + "\n\n")
    }
}
