import ArgumentParser
import KeelQEMU

/// `keel undefine NAME`: removes a domain's definition.
struct DomainUndefine: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "undefine", abstract: "Remove a domain's definition.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.undefine(name: name) }
        Output.print(json ? JSON.object([("name", .string(name)), ("undefined", .bool(true))]).text + "\n" : "Domain '\(name)' has been undefined\n")
    }
}
