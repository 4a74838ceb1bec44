import ArgumentParser
import KeelQEMU
import KeelXML

/// `keel managedsave-dumpxml NAME`: the domain XML stored in the managed-save image.
struct DomainManagedSaveDumpXML: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "managedsave-dumpxml",
        abstract: "Print the domain XML stored in a domain's managed-save image.",
        discussion: "As save-image dumpxml: the XML holds the original CPU; the updated CPU is in the image's cookie."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(name: .customLong("security-info"), help: "Include security-sensitive information (graphics passwords).") var securityInfo = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        var xml = try await driverCall { try await backend.managedSaveXML(name: name) }
        if !securityInfo, let root = try? XMLParser.parse(xml), let filtered = SaveImageInspector.withoutGraphicsPasswords(root) {
            xml = filtered.formatted()
        }
        Output.print(json ? JSON.object([("name", .string(name)), ("xml", .string(xml))]).text + "\n" : xml)
    }
}
