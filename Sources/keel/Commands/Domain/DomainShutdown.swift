import ArgumentParser
import KeelQEMU

/// `keel shutdown NAME`: asks the guest to power off (ACPI) and waits for it.
struct DomainShutdown: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shutdown",
        abstract: "Gracefully shut down a domain (ACPI power button) and wait for it to stop.",
        discussion: "The guest decides: one that ignores the power button keeps running, and the command fails after --timeout. Use destroy to stop it at once."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Option(help: "Seconds to wait for the guest to stop.") var timeout: Double = 60
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        guard timeout.isFinite, timeout >= 0, timeout <= 86_400 else {
            throw ValidationError("--timeout must be between 0 and 86400 seconds")
        }
    }

    func run() async throws {
        let backend = try options.backend()
        try await driverCall { try await backend.shutdown(name: name, timeout: .milliseconds(Int64(timeout * 1000))) }
        Output.print(json ? JSON.object([("name", .string(name)), ("state", .string("shutoff"))]).text + "\n" : "Domain '\(name)' is shut down\n")
    }
}
