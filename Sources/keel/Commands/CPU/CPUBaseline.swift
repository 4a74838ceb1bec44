import ArgumentParser
import KeelCPU

/// `keel cpu-baseline`: the CPU every given host can run, as `virsh cpu-baseline` computes it.
struct CPUBaseline: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-baseline",
        abstract: "Compute the baseline CPU of the host CPUs described in an XML file.",
        discussion: """
            FILE may hold several <cpu> elements (each with <arch>), capabilities XML, or \
            domain capabilities XML. The result is printed as libvirt formats it.
            """
    )

    @Argument(help: "XML file with the host CPUs.")
    var file: String

    @Flag(help: "Show all features of the baseline model explicitly.")
    var features = false

    @Flag(help: "Leave out features that block migration.")
    var migratable = false

    @Option(name: .customLong("cpu-map"), help: "A libvirt-format cpu_map directory (default: $KEEL_CPU_MAP, else the built-in map).")
    var cpuMap: String?

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        let cpus = try CPUInput.definitions(CPUInput.cpuElements(inFile: file), as: .host, file: file)
        let map = try CPUInput.map(cpuMap)
        let baseline: CPUDefinition
        do {
            baseline = try map.baseline(cpus, expandFeatures: features, migratable: migratable)
        } catch let failure as CPUError {
            throw CommandFailure(message: failure.message)
        }
        let xml = baseline.formatted()
        if json {
            var members: [(String, JSON)] = [("cpu", .string(xml)), ("model", .string(baseline.model ?? ""))]
            members.append(("vendor", baseline.vendor.map(JSON.string) ?? .null))
            members.append(("fallback", .string(baseline.fallback.rawValue)))
            members.append(("features", .array(baseline.features.map {
                .object([("name", .string($0.name)), ("policy", .string($0.effectivePolicy.rawValue))])
            })))
            Output.print(JSON.object(members).text + "\n")
        } else {
            // virsh prints the XML (which ends in a newline) followed by one more newline.
            Output.print(xml + "\n")
        }
    }
}
