import ArgumentParser
import Glibc
import KeelCPU
import KeelQEMU

/// `keel cpu-compare`: compares a CPU with a host CPU, as `virsh cpu-compare` does.
struct CPUCompare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cpu-compare",
        abstract: "Compare a CPU described in an XML file with a host CPU.",
        discussion: """
            FILE may hold a bare <cpu>, a domain, capabilities or domain capabilities XML; the \
            first CPU found is compared. Exit status: 0 identical or superset, 1 incompatible or \
            error, 2 incompatible with --error.
            """
    )

    @Argument(help: "XML file with the CPU to compare.")
    var file: String

    @Option(name: .customLong("host"), help: "XML file with the host CPU (capabilities XML or a <cpu> with <arch>); default: this host's CPU as KVM offers it.")
    var hostFile: String?

    @Option(name: .customLong("state"), help: "The state directory holding the capabilities cache (default: $KEEL_STATE, else /var/lib/keel).")
    var state: String?

    @Option(name: .customLong("cpu-map"), help: "A libvirt-format cpu_map directory (default: $KEEL_CPU_MAP, else the built-in map).")
    var cpuMap: String?

    @Flag(help: "Report an incompatible CPU as an error (exit 2) naming the offending features.")
    var error = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() async throws {
        let cpu = try CPUInput.definitions(CPUInput.cpuElements(inFile: file), as: .auto, file: file)[0]
        let map = try CPUInput.map(cpuMap)
        let host: CPUDefinition?
        if let hostFile {
            host = try CPUInput.definitions(CPUInput.cpuElements(inFile: hostFile), as: .auto, file: hostFile)[0]
        } else {
            host = await Self.thisHost(state: state, map: map)
        }
        let comparison: CPUComparison
        do {
            comparison = try map.compare(cpu, to: host)
        } catch let failure as CPUError {
            throw CommandFailure(message: failure.message)
        }
        if json {
            Output.print(Self.json(comparison).text + "\n")
        } else {
            switch comparison.result {
            case .incompatible:
                if !error {
                    Output.print("CPU described in \(file) is incompatible with host CPU\n")
                }
            case .identical:
                Output.print("CPU described in \(file) is identical to host CPU\n")
            case .superset:
                Output.print("Host CPU is a superset of CPU described in \(file)\n")
            }
        }
        if comparison.result == .incompatible {
            if error {
                throw CommandFailure(
                    message: "the CPU is incompatible with host CPU: \(comparison.message ?? "unknown reason")",
                    exitCode: 2
                )
            }
            throw ExitCode(1)
        }
    }

    /// This machine's CPU as libvirt's capabilities report it: KVM's host CPU decoded on the map;
    /// nil (an "unknown host CPU", as in libvirt) when KVM is not usable.
    static func thisHost(state: String?, map: CPUMap) async -> CPUDefinition? {
        let directory = state ?? getenv("KEEL_STATE").flatMap { String(validatingCString: $0) } ?? "/var/lib/keel"
        guard let driver = try? Driver(stateDirectory: directory, map: map),
              let capabilities = try? await driver.capabilities(.kvm)
        else { return nil }
        return capabilities.hostCPU(map: map)
    }

    static func json(_ comparison: CPUComparison) -> JSON {
        var byKind: [(String, JSON)] = []
        for kind in [CPUFeatureProblem.Kind.missing, .forbidden, .extra] {
            let problems = comparison.features.filter { $0.kind == kind }
            if problems.isEmpty { continue }
            byKind.append((kind.rawValue, .array(problems.map(featureJSON))))
        }
        var members: [(String, JSON)] = [
            ("result", .string(comparison.result.rawValue)),
            ("features", .object(byKind)),
        ]
        if let message = comparison.message {
            members.append(("message", .string(message)))
        }
        return .object(members)
    }

    static func featureJSON(_ problem: CPUFeatureProblem) -> JSON {
        .object([
            ("name", .string(problem.name)),
            ("bits", .array(problem.locations.map { .string($0.description) })),
        ])
    }
}
