import ArgumentParser
import KeelQEMU
import KeelSaveImage

/// `keel save NAME FILE`: saves a running domain to a libvirt-compatible image and stops it.
struct DomainSave: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save",
        abstract: "Save a running domain's state to a file and stop it.",
        discussion: "The image is libvirt's format: the original CPU in the domain XML, the updated CPU and Keel's ABI record in the cookie."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Argument(help: "The image to write.") var file: String
    @Flag(help: "Restore resumes the guest.") var running = false
    @Flag(help: "Restore leaves the guest paused.") var paused = false
    @Option(help: "Compress the QEMU stream: raw, gzip, bzip2, xz, lzop, zstd.") var compress: String = "raw"
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
        if SaveImageCompression(name: compress) == nil { throw ValidationError("unknown compression '\(compress)'") }
    }

    func run() async throws {
        let backend = try options.backend()
        let compression = SaveImageCompression(name: compress) ?? .raw
        let override: Bool? = running ? true : (paused ? false : nil)
        try await driverCall {
            try await withProgress(backend: backend, domain: name, label: "Save") {
                try await backend.save(name: name, file: file, running: override, compression: compression)
            }
        }
        Output.print(json ? JSON.object([("name", .string(name)), ("file", .string(file))]).text + "\n" : "Domain '\(name)' saved to \(file)\n")
    }
}
