import ArgumentParser
import KeelQEMU

/// `keel managedsave NAME`: saves a running domain to its managed-save image; `start` restores it.
struct DomainManagedSave: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "managedsave",
        abstract: "Save a running domain's state to its managed-save image and stop it.",
        discussion: "The image is STATE/save/NAME.save, in libvirt's format; the next start restores it with the guest CPU pinned and then removes it."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "The restore resumes the guest.") var running = false
    @Flag(help: "The restore leaves the guest paused.") var paused = false
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
    }

    func run() async throws {
        let backend = try options.backend()
        let override: Bool? = running ? true : (paused ? false : nil)
        let path = try await driverCall {
            try await withProgress(backend: backend, domain: name, label: "Save") {
                try await backend.managedSave(name: name, running: override)
            }
        }
        Output.print(json ? JSON.object([("name", .string(name)), ("file", .string(path))]).text + "\n" : "Domain '\(name)' state saved to \(path)\n")
    }
}
