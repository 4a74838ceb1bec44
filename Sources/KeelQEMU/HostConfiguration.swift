import KeelCPU
import KeelXML

/// A host's configuration, read from `STATE/config.xml`:
///
/// ```
/// <keel>
///   <emulator>/usr/bin/qemu-system-x86_64</emulator>
///   <cpu-ceiling>
///     <cpu><model>Haswell-noTSX-IBRS</model><feature name='vmx'/></cpu>
///   </cpu-ceiling>
/// </keel>
/// ```
///
/// The ceiling is the CPU guests on this host may not exceed, as fleets set it to keep hosts
/// interchangeable: starts that would need more are refused, and restores or incoming
/// migrations that would need more are refused before QEMU loads any state.
public struct HostConfiguration: Sendable, Hashable {
    public var emulator: String
    public var cpuCeiling: CPUDefinition?

    public init(emulator: String = "/usr/bin/qemu-system-x86_64", cpuCeiling: CPUDefinition? = nil) {
        self.emulator = emulator
        self.cpuCeiling = cpuCeiling
    }

    /// Reads the configuration file; a missing file gives the defaults.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` naming the file and the problem.
    public static func load(path: String) throws -> HostConfiguration {
        guard let text = try POSIXFile.readString(path) else { return HostConfiguration() }
        do {
            let root = try XMLParser.parse(text)
            guard root.name == "keel" else {
                throw QEMUError(.invalidArgument, "\(path): root element must be <keel>, not <\(root.name)>")
            }
            var configuration = HostConfiguration()
            if let emulator = root.child("emulator")?.text, !emulator.isEmpty {
                configuration.emulator = emulator
            }
            if let cpu = root.child("cpu-ceiling")?.child("cpu") {
                configuration.cpuCeiling = try CPUDefinition(xml: cpu, as: .guest)
            }
            return configuration
        } catch let error as XMLError {
            throw QEMUError(.invalidArgument, "\(path): \(error.description)")
        } catch let error as CPUError {
            throw QEMUError(.invalidArgument, "\(path): invalid CPU ceiling: \(error.message)")
        }
    }

    public var xmlElement: XMLElement {
        var root = XMLElement("keel")
        root.append(XMLElement("emulator", text: emulator))
        if let cpuCeiling {
            root.append(XMLElement("cpu-ceiling", children: [.element(cpuCeiling.xmlElement)]))
        }
        return root
    }
}
