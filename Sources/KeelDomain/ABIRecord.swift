import KeelCPU
import KeelXML

/// Keel's self-describing record of a guest's CPU ABI, carried in every artifact (save-image
/// cookie, snapshot cookie, migration cookie) inside an element in Keel's own XML namespace,
/// which libvirt's parsers ignore.
///
/// ```
/// <keel:abi xmlns:keel='https://keel.dev/xmlns/abi/1' version='1'>
///   <keel:requested><cpu …/></keel:requested>      the CPU the user asked for (original)
///   <keel:effective><cpu …/></keel:effective>      the CPU the guest got (check='full')
///   <keel:cpuid>
///     <keel:word leaf='0x7' subleaf='0x0' register='ebx' value='0x…'/>   as QEMU reported them
///   </keel:cpuid>
///   <keel:qemu version='7.2.22' accelerator='kvm' machine='pc-i440fx-7.2'/>
///   <keel:manager name='keel' version='0.1.0'/>
///   <keel:host signature='6/94/3' microcode='0xf0' kernel='6.1.0-…'/>
/// </keel:abi>
/// ```
public struct ABIRecord: Sendable, Hashable {
    /// The namespace URI of Keel's elements. ABI: never change.
    public static let namespace = "https://keel.dev/xmlns/abi/1"
    /// The record's format version (not Keel's version).
    public static let formatVersion = 1

    public struct Host: Sendable, Hashable {
        /// family/model/stepping of the saving host's CPU.
        public var signature: String?
        public var microcode: String?
        public var kernel: String?

        public init(signature: String? = nil, microcode: String? = nil, kernel: String? = nil) {
            self.signature = signature
            self.microcode = microcode
            self.kernel = kernel
        }
    }

    public var requestedCPU: CPUDefinition?
    public var effectiveCPU: CPUDefinition?
    /// The enabled CPUID words exactly as QEMU reported them (`feature-words`).
    public var cpuidWords: [CPUIDWord]
    public var qemuVersion: String?
    /// kvm or tcg.
    public var accelerator: String?
    public var machine: String?
    public var managerVersion: String?
    public var host: Host

    public init(
        requestedCPU: CPUDefinition? = nil, effectiveCPU: CPUDefinition? = nil, cpuidWords: [CPUIDWord] = [],
        qemuVersion: String? = nil, accelerator: String? = nil, machine: String? = nil,
        managerVersion: String? = nil, host: Host = Host()
    ) {
        self.requestedCPU = requestedCPU
        self.effectiveCPU = effectiveCPU
        self.cpuidWords = cpuidWords
        self.qemuVersion = qemuVersion
        self.accelerator = accelerator
        self.machine = machine
        self.managerVersion = managerVersion
        self.host = host
    }

    /// The `<keel:abi>` element.
    public var xmlElement: XMLElement {
        var root = XMLElement("keel:abi", attributes: [
            XMLAttribute("xmlns:keel", ABIRecord.namespace), XMLAttribute("version", String(ABIRecord.formatVersion)),
        ])
        if let requestedCPU {
            root.append(XMLElement("keel:requested", children: [.element(requestedCPU.xmlElement)]))
        }
        if let effectiveCPU {
            root.append(XMLElement("keel:effective", children: [.element(effectiveCPU.xmlElement)]))
        }
        if !cpuidWords.isEmpty {
            root.append(XMLElement("keel:cpuid", children: cpuidWords.map { word in
                .element(XMLElement("keel:word", attributes: [
                    XMLAttribute("leaf", hex(word.leaf)), XMLAttribute("subleaf", hex(word.subleaf)),
                    XMLAttribute("register", word.register.rawValue), XMLAttribute("value", hex(word.value)),
                ]))
            }))
        }
        var qemu = XMLElement("keel:qemu")
        qemu.setAttribute("version", qemuVersion)
        qemu.setAttribute("accelerator", accelerator)
        qemu.setAttribute("machine", machine)
        if !qemu.attributes.isEmpty { root.append(qemu) }
        var manager = XMLElement("keel:manager", attributes: [XMLAttribute("name", "keel")])
        manager.setAttribute("version", managerVersion)
        root.append(manager)
        var hostElement = XMLElement("keel:host")
        hostElement.setAttribute("signature", host.signature)
        hostElement.setAttribute("microcode", host.microcode)
        hostElement.setAttribute("kernel", host.kernel)
        if !hostElement.attributes.isEmpty { root.append(hostElement) }
        return root
    }

    /// Reads a `<keel:abi>` element (any prefix bound to Keel's namespace).
    ///
    /// - Throws: `DomainError` for a record of an unknown format version or malformed content.
    public init(xml element: XMLElement) throws {
        let prefix = element.name.split(separator: ":").count == 2 ? String(element.name.split(separator: ":")[0]) + ":" : ""
        func child(_ name: String) -> XMLElement? { element.child(prefix + name) }
        if let version = element.attribute("version"), version != String(ABIRecord.formatVersion) {
            throw DomainError(.unsupported, "unsupported ABI record version \(version)")
        }
        self.init()
        do {
            if let cpu = child("requested")?.child("cpu") {
                requestedCPU = try CPUDefinition(xml: cpu, as: .guest)
            }
            if let cpu = child("effective")?.child("cpu") {
                effectiveCPU = try CPUDefinition(xml: cpu, as: .guest)
            }
        } catch let error as CPUError {
            throw DomainError(.invalidXML, "invalid CPU in ABI record: \(error.message)")
        }
        for word in child("cpuid")?.children(named: prefix + "word") ?? [] {
            guard let leaf = word.attribute("leaf").flatMap(parseHex),
                  let subleaf = word.attribute("subleaf").flatMap(parseHex),
                  let register = word.attribute("register").flatMap(CPUFeatureLocation.Register.init(rawValue:)),
                  let value = word.attribute("value").flatMap(parseHex)
            else {
                throw DomainError(.invalidXML, "invalid CPUID word in ABI record: \(word.formatted().trimmingSpaces)")
            }
            cpuidWords.append(CPUIDWord(leaf: leaf, subleaf: subleaf, register: register, value: value))
        }
        if let qemu = child("qemu") {
            qemuVersion = qemu.attribute("version")
            accelerator = qemu.attribute("accelerator")
            machine = qemu.attribute("machine")
        }
        managerVersion = child("manager")?.attribute("version")
        if let hostElement = child("host") {
            host = Host(signature: hostElement.attribute("signature"), microcode: hostElement.attribute("microcode"), kernel: hostElement.attribute("kernel"))
        }
    }

    /// Whether `element` is an ABI record: its name's prefix is bound to Keel's namespace.
    public static func isRecord(_ element: XMLElement) -> Bool {
        let parts = element.name.split(separator: ":")
        let local = parts.last.map(String.init) ?? ""
        let declaration = parts.count == 2 ? "xmlns:" + parts[0] : "xmlns"
        return local == "abi" && element.attribute(declaration) == ABIRecord.namespace
    }
}

func hex(_ value: UInt32) -> String {
    "0x" + String(value, radix: 16)
}

func parseHex(_ text: String) -> UInt32? {
    if text.hasPrefix("0x") || text.hasPrefix("0X") {
        return UInt32(text.dropFirst(2), radix: 16)
    }
    return UInt32(text)
}
