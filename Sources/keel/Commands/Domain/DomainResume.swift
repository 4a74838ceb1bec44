import ArgumentParser
import KeelQEMU

/// `keel resume NAME`: resumes a paused guest.
struct DomainResume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused domain.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.setPaused(name: name, false) }
        Output.print(json ? JSON.object([("name", .string(name)), ("state", .string("running"))]).text + "\n" : "Domain '\(name)' resumed\n")
    }
}
