import ArgumentParser
import KeelQEMU

/// `keel domjobabort NAME`: cancels the save, restore or migration running on a domain.
struct DomainJobAbort: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domjobabort",
        abstract: "Abort the job running on a domain.",
        discussion: "A save is cancelled in QEMU: its image is discarded and the guest resumes as it was. A restore stops its QEMU and keeps the image. Waits until the job has stopped."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let job = try await driverCall { try await backend.abortJob(name: name) }
        if json {
            Output.print(JSON.object([("name", .string(name)), ("aborted", .bool(true)), ("operation", .string(job.operation.rawValue))]).text + "\n")
        }
    }
}
