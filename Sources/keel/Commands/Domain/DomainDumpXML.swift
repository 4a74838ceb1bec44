import ArgumentParser
import KeelQEMU

/// `keel dumpxml NAME`: the domain XML.
struct DomainDumpXML: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dumpxml", abstract: "Print the domain XML (live when running).")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "The persistent definition even when running.") var inactive = false
    @Flag(help: "With the original CPU instead of the updated one, as saved images and migrations carry it.") var migratable = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let xml = try await driverCall { try await backend.xml(name: name, inactive: inactive, migratable: migratable) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("xml", .string(xml))]).text + "\n")
        } else {
            Output.print(xml)
        }
    }
}
