import ArgumentParser
import KeelQEMU

/// `keel suspend NAME`: pauses the guest's vCPUs.
struct DomainSuspend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "suspend", abstract: "Pause a running domain.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.setPaused(name: name, true) }
        Output.print(json ? JSON.object([("name", .string(name)), ("state", .string("paused"))]).text + "\n" : "Domain '\(name)' suspended\n")
    }
}
