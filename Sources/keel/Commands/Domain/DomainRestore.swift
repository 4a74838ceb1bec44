import ArgumentParser
import Glibc
import KeelDomain
import KeelQEMU
import KeelSaveImage

/// `keel restore FILE`: restores a domain from a save image, keeping its CPU exactly.
struct DomainRestore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a domain from a save image, with its guest CPU exactly as saved.",
        discussion: "Before QEMU starts, Keel decides whether this host can reproduce the saved CPU and refuses naming each feature with its CPUID bits. --dry-run prints that verdict and starts nothing."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "The image to restore.") var file: String
    @Flag(help: "Resume the guest after restoring.") var running = false
    @Flag(help: "Leave the guest paused after restoring.") var paused = false
    @Option(name: .customLong("xml"), help: "A replacement domain XML (must keep the guest ABI).") var xmlFile: String?
    @Flag(name: .customLong("dry-run"), help: "Only decide whether this host can restore the image.") var dryRun = false
    @Flag(help: "Print the result as JSON.") var json = false

    func validate() throws {
        if running && paused { throw ValidationError("--running and --paused are mutually exclusive") }
    }

    func run() async throws {
        let backend = try options.backend()
        let xml = try xmlFile.map { String(decoding: try CPUInput.readFile($0), as: UTF8.self) }
        if dryRun {
            let plan = try await driverCall { try await backend.planRestore(file: file, xml: xml) }
            let verdict = plan.verdict
            if json {
                func list(_ problems: [CPUVerdict.Problem]) -> JSON {
                    .array(problems.map { .object([
                        ("name", .string($0.feature.name)), ("bits", .array($0.feature.locations.map { .string($0.description) })),
                        ("reason", .string($0.reason)),
                    ]) })
                }
                Output.print(JSON.object([
                    ("restorable", .bool(verdict.restorable)), ("missing", list(verdict.missing)), ("extra", list(verdict.extra)),
                    ("reasons", .array(verdict.reasons.map(JSON.string))), ("domain", .string(plan.domain)),
                    ("cpu", plan.cpu.map(JSON.string) ?? .null),
                ]).text + "\n")
            } else {
                Output.print(VerdictText.render(domain: plan.domain, can: "be restored on this host", verdict: verdict))
            }
            if !verdict.restorable { throw ExitCode(1) }
            return
        }
        let override: Bool? = running ? true : (paused ? false : nil)
        // On a terminal, the domain's name (its job drives the progress bar) comes from the
        // image's data area; piped, nothing extra is read.
        let name = isatty(2) == 1 ? (try? SaveImage.read(path: file)).flatMap { try? DomainDefinition(xmlString: $0.dataArea.xml).name } : nil
        let restored = try await driverCall {
            guard let name else { return try await backend.restore(file: file, running: override, xml: xml) }
            return try await withProgress(backend: backend, domain: name, label: "Restore") {
                try await backend.restore(file: file, running: override, xml: xml)
            }
        }
        Output.print(json ? JSON.object([("name", .string(restored.name)), ("state", .string(restored.state))]).text + "\n"
                          : "Domain '\(restored.name)' restored from \(file)\n")
    }
}
