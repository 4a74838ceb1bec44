import ArgumentParser
import KeelQEMU

/// `keel destroy NAME`: stops a domain at once.
struct DomainDestroy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "destroy", abstract: "Stop a running domain at once.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.destroy(name: name) }
        Output.print(json ? JSON.object([("name", .string(name)), ("state", .string("shutoff"))]).text + "\n" : "Domain '\(name)' destroyed\n")
    }
}
