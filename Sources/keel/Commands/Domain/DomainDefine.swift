import ArgumentParser
import KeelQEMU

/// `keel define XML`: defines a domain from an XML file.
struct DomainDefine: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "define", abstract: "Define a domain from an XML file.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain XML file.") var file: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let xml = String(decoding: try CPUInput.readFile(file), as: UTF8.self)
        let backend = try options.backend()
        let definition = try await driverCall { try await backend.define(xml: xml) }
        if json {
            Output.print(JSON.object([("name", .string(definition.name)), ("uuid", definition.uuid.map(JSON.string) ?? .null),
                                      ("machine", definition.os.machine.map(JSON.string) ?? .null)]).text + "\n")
        } else {
            Output.print("Domain '\(definition.name)' defined from \(file)\n")
        }
    }
}
