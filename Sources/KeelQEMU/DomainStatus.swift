import KeelCPU
import KeelDomain
import KeelXML

/// The state of a running (or paused) domain, persisted next to its QMP socket so that later
/// commands — and Keel after a restart — find the QEMU process and both CPU definitions.
///
/// ```
/// <domstatus state='running' reason='restored' pid='1234' accelerator='tcg' qemu='7.2.22'>
///   <qmp path='…/run/web-1.qmp'/>
///   <origcpu><cpu …/></origcpu>           the CPU the user asked for, when QEMU changed it
///   <cpuid><word leaf= subleaf= register= value=/>…</cpuid>   feature-words at start
///   <domain …>…</domain>                  the live definition, with the updated CPU
/// </domstatus>
/// ```
public struct DomainStatus: Sendable, Hashable {
    public enum State: String, Sendable, Hashable {
        case running, paused, saving, restoring, crashed
    }

    public var state: State
    /// Why it is in this state: booted, restored, user, migrated, saved…
    public var reason: String
    public var pid: Int32
    public var qmpSocket: String
    public var accelerator: QEMUCapabilities.Accelerator
    public var qemuVersion: String
    /// The live definition (its CPU is the updated one).
    public var live: DomainDefinition
    /// The original CPU, kept only when QEMU changed it.
    public var originalCPU: CPUDefinition?
    /// The enabled CPUID words QEMU reported when the guest was started.
    public var cpuidWords: [CPUIDWord]

    public var xmlElement: XMLElement {
        var root = XMLElement("domstatus", attributes: [
            XMLAttribute("state", state.rawValue), XMLAttribute("reason", reason), XMLAttribute("pid", String(pid)),
            XMLAttribute("accelerator", accelerator.rawValue), XMLAttribute("qemu", qemuVersion),
        ])
        root.append(XMLElement("qmp", attributes: [XMLAttribute("path", qmpSocket)]))
        if let originalCPU {
            root.append(XMLElement("origcpu", children: [.element(originalCPU.xmlElement)]))
        }
        root.append(XMLElement("cpuid", children: cpuidWords.map { word in
            .element(XMLElement("word", attributes: [
                XMLAttribute("leaf", String(word.leaf)), XMLAttribute("subleaf", String(word.subleaf)),
                XMLAttribute("register", word.register.rawValue), XMLAttribute("value", String(word.value)),
            ]))
        }))
        root.append(live.xml)
        return root
    }

    public init(state: State, reason: String, pid: Int32, qmpSocket: String, accelerator: QEMUCapabilities.Accelerator,
                qemuVersion: String, live: DomainDefinition, originalCPU: CPUDefinition?, cpuidWords: [CPUIDWord]) {
        self.state = state
        self.reason = reason
        self.pid = pid
        self.qmpSocket = qmpSocket
        self.accelerator = accelerator
        self.qemuVersion = qemuVersion
        self.live = live
        self.originalCPU = originalCPU
        self.cpuidWords = cpuidWords
    }

    public init(xml root: XMLElement) throws {
        guard root.name == "domstatus",
              let state = root.attribute("state").flatMap(State.init(rawValue:)),
              let pid = root.attribute("pid").flatMap(Int32.init),
              let accelerator = root.attribute("accelerator").flatMap(QEMUCapabilities.Accelerator.init(rawValue:)),
              let qmp = root.child("qmp")?.attribute("path"),
              let domain = root.child("domain")
        else {
            throw QEMUError(.invalidState, "corrupt domain status file")
        }
        self.state = state
        reason = root.attribute("reason") ?? ""
        self.pid = pid
        qmpSocket = qmp
        self.accelerator = accelerator
        qemuVersion = root.attribute("qemu") ?? ""
        do {
            live = try DomainDefinition(xml: domain)
            originalCPU = try root.child("origcpu")?.child("cpu").map { try CPUDefinition(xml: $0, as: .guest) }
        } catch {
            throw QEMUError(.invalidState, "corrupt domain status file: \(error)")
        }
        cpuidWords = (root.child("cpuid")?.children(named: "word") ?? []).compactMap { word in
            guard let leaf = word.attribute("leaf").flatMap(UInt32.init), let subleaf = word.attribute("subleaf").flatMap(UInt32.init),
                  let register = word.attribute("register").flatMap(CPUFeatureLocation.Register.init(rawValue:)),
                  let value = word.attribute("value").flatMap(UInt32.init)
            else { return nil }
            return CPUIDWord(leaf: leaf, subleaf: subleaf, register: register, value: value)
        }
    }

    /// The definition with the original CPU swapped in, as written to save images and sent to
    /// migration destinations (libvirt's "migratable" XML).
    public var migratableDefinition: DomainDefinition {
        originalCPU.map { live.with(cpu: $0) } ?? live
    }
}
