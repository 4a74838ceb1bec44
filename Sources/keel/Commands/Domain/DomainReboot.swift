import ArgumentParser
import KeelQEMU

/// `keel reboot NAME`: resets the guest; it boots again in the same QEMU, with the same CPU.
struct DomainReboot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reboot", abstract: "Reboot a domain (system reset).")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.reboot(name: name) }
        Output.print(json ? JSON.object([("name", .string(name)), ("rebooted", .bool(true))]).text + "\n" : "Domain '\(name)' is being rebooted\n")
    }
}
