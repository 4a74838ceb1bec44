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
        let driver = try options.driver()
        let status = try await driverCall { try await driver.start(name: name, paused: paused) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("state", .string(status.state.rawValue)), ("pid", .int(Int(status.pid))),
                                      ("cpu", status.live.cpu.map { .string($0.formatted()) } ?? .null),
                                      ("originalCPU", status.originalCPU.map { .string($0.formatted()) } ?? .null)]).text + "\n")
        } else {
            Output.print("Domain '\(name)' started\n")
        }
    }
}
