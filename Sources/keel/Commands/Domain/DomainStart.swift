import ArgumentParser
import KeelQEMU

/// `keel start NAME`: starts a defined domain.
struct DomainStart: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start a defined domain.")

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Leave the guest paused.") var paused = false
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let started = try await driverCall { try await backend.start(name: name, paused: paused) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("state", .string(started.state)), ("pid", .int(Int(started.pid))),
                                      ("cpu", started.cpu.map(JSON.string) ?? .null),
                                      ("originalCPU", started.originalCPU.map(JSON.string) ?? .null)]).text + "\n")
        } else {
            Output.print("Domain '\(name)' started\n")
        }
    }
}
