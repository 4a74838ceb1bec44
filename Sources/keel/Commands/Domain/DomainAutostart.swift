import ArgumentParser
import KeelQEMU

/// `keel autostart NAME`: marks a domain to be started when the daemon starts.
struct DomainAutostart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "autostart", abstract: "Mark (or with --disable, unmark) a domain for autostart.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Turn autostart off.") var disable = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.setAutostart(name: name, !disable) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("autostart", .bool(!disable))]).text + "\n")
        } else {
            Output.print(disable ? "Domain '\(name)' unmarked as autostarted\n" : "Domain '\(name)' marked as autostarted\n")
        }
    }
}
