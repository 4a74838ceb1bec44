import Foundation
import KeelTestSupport
import KeelCPU
import KeelXML

/// A small deterministic generator (SplitMix64), so property tests are reproducible by seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum TestEnvironment {
    static let libvirtMapDirectory = "/usr/share/libvirt/cpu_map"

    /// libvirt 9.0's installed cpu_map, or nil (with the reason printed) when it is absent.
    static let libvirtMap: CPUMap? = {
        guard FileManager.default.fileExists(atPath: libvirtMapDirectory + "/index.xml") else {
            print("SKIP: \(libvirtMapDirectory) is missing (install libvirt-clients); tests against libvirt's map are skipped")
            return nil
        }
        do {
            return try CPUMap.load(directory: libvirtMapDirectory)
        } catch {
            print("SKIP: cannot load \(libvirtMapDirectory): \(error)")
            return nil
        }
    }()

    static let virsh: String? = {
        for path in ["/usr/bin/virsh", "/usr/local/bin/virsh"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        print("SKIP: virsh is not installed (install libvirt-clients); comparisons with real libvirt are skipped")
        return nil
    }()

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
}

/// Runs a program and returns its exit status, stdout and stderr.
func run(_ program: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
    let result = try Subprocess.run(program, arguments, environment: environment, timeout: 120)
    if result.timedOut { throw Subprocess.Failure(description: "\(program) \(arguments) did not finish within 120 s") }
    return (result.status, result.stdout, result.stderr)
}

func parseCPU(_ xml: String, as kind: CPUDefinition.ParseKind = .auto) throws -> CPUDefinition {
    try CPUDefinition(xmlString: xml, as: kind)
}

/// Random host CPUs built from a map's models and features.
enum RandomCPUs {
    static func hostSet(map: CPUMap, using rng: inout SeededGenerator) -> [CPUDefinition] {
        let vendors = ["Intel", "AMD"]
        let setVendor = vendors.randomElement(using: &rng) ?? "Intel"
        let count = Int.random(in: 2...8, using: &rng)
        let usable = map.models.filter { $0.decodeHost || Bool.random(using: &rng) }
        var cpus: [CPUDefinition] = []
        for _ in 0..<count {
            // Mostly one vendor per set; sometimes a stray one to exercise the vendor errors.
            let vendor = Int.random(in: 0..<20, using: &rng) == 0 ? (vendors.randomElement(using: &rng) ?? "AMD") : setVendor
            let candidates = usable.filter { $0.vendor == vendor || ($0.vendor == nil && Int.random(in: 0..<6, using: &rng) == 0) }
            guard let model = (candidates.isEmpty ? usable : candidates).randomElement(using: &rng) else { continue }
            var cpu = CPUDefinition(type: .host, model: model.name)
            cpu.arch = "x86_64"
            if Int.random(in: 0..<8, using: &rng) != 0 {
                cpu.vendor = model.vendor ?? vendor
            }
            let extraCount = Int.random(in: 0...12, using: &rng)
            var names = Set<String>()
            for _ in 0..<extraCount {
                if let feature = map.features.randomElement(using: &rng) {
                    names.insert(feature.name)
                }
            }
            cpu.features = names.sorted().map { CPUDefinition.Feature($0, nil) }
            cpus.append(cpu)
        }
        return cpus
    }
}
