import ArgumentParser
import KeelQEMU

/// `keel managedsave-define NAME XMLFILE`: replaces the domain XML in the managed-save image.
struct DomainManagedSaveDefine: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "managedsave-define",
        abstract: "Replace the domain XML stored in a domain's managed-save image.",
        discussion: "As save-image define: the new XML must keep the guest ABI of the stored one; the cookie (updated CPU) and the QEMU stream stay untouched."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Argument(help: "The new domain XML.") var xmlFile: String
    @Flag(help: "The restore resumes the guest.") var running = false
    @Flag(help: "The restore leaves the guest paused.") var paused = false
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
        if xmlFile.isEmpty { throw ValidationError("XMLFILE must not be empty") }
    }

    func run() async throws {
        let backend = try options.backend()
        let xml = try SaveImageInspector.readXMLFile(xmlFile)
        let override: Bool? = running ? true : (paused ? false : nil)
        let changed = try await driverCall { try await backend.managedSaveDefine(name: name, xml: xml, running: override) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("changed", .bool(changed))]).text + "\n")
        } else {
            Output.print(changed ? "Managed save state file of domain '\(name)' updated.\n" : "Managed save state file of domain '\(name)' not changed.\n")
        }
    }
}
