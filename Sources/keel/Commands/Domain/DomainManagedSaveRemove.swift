import ArgumentParser
import KeelQEMU

/// `keel managedsave-remove NAME`: drops the managed-save image; the next start boots fresh.
struct DomainManagedSaveRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "managedsave-remove", abstract: "Remove a domain's managed-save image.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let removed = try await driverCall { try await backend.removeManagedSave(name: name) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("removed", .bool(removed))]).text + "\n")
        } else {
            Output.print(removed ? "Removed managedsave image for domain '\(name)'\n" : "Domain '\(name)' has no manage save image; removal skipped\n")
        }
    }
}
