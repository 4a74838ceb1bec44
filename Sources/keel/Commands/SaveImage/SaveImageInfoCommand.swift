import ArgumentParser

/// `keel save-image info FILE`: the header, the domain, both CPUs and their difference, and
/// Keel's ABI record, read from the header and data area only.
struct SaveImageInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show a save image's header, domain, original and updated CPU, and ABI record.",
        discussion: """
            Only the header and the data area are read, never the QEMU stream, so this is \
            instant on images of any size. An incomplete image (its writer died) is shown and \
            marked as such. The CPU difference is computed with the CPU map feature by feature, \
            with each feature's CPUID bits.
            """
    )

    @Argument(help: "The save image.")
    var file: String

    @Option(name: .customLong("cpu-map"), help: "A libvirt-format cpu_map directory (default: $KEEL_CPU_MAP, else the built-in map).")
    var cpuMap: String?

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        if file.isEmpty { throw ValidationError("FILE must not be empty") }
    }

    func run() throws {
        let inspection = try SaveImageInspector.inspect(path: file, cpuMap: cpuMap)
        Output.print(json ? inspection.json.text + "\n" : inspection.text)
    }
}
