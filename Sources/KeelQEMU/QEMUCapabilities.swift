import KeelCPU
import KeelXML

/// What one QEMU binary offers under one accelerator, as probed over QMP and cached on disk,
/// keyed by the binary's identity (path, size, modification time, inode).
public struct QEMUCapabilities: Sendable, Hashable {
    public enum Accelerator: String, Sendable, Hashable, CaseIterable {
        case kvm
        case tcg

        /// The accelerator a `<domain type>` asks for.
        public init?(domainType: String) {
            switch domainType {
            case "kvm": self = .kvm
            case "qemu": self = .tcg
            default: return nil
            }
        }

        /// The `<domain type>` name.
        public var domainType: String { self == .kvm ? "kvm" : "qemu" }
    }

    public struct Machine: Sendable, Hashable {
        public var name: String
        /// The versioned machine an alias resolves to (`pc` → `pc-i440fx-7.2`).
        public var canonical: String?
        public var isDefault: Bool
        /// The most vCPUs the machine takes (`cpu-max`), nil when unknown.
        public var maxCPUs: Int?
        public var isDeprecated: Bool

        public init(name: String, canonical: String? = nil, isDefault: Bool = false, maxCPUs: Int? = nil, isDeprecated: Bool = false) {
            self.name = name
            self.canonical = canonical
            self.isDefault = isDefault
            self.maxCPUs = maxCPUs
            self.isDeprecated = isDeprecated
        }
    }

    public struct CPUModel: Sendable, Hashable {
        public var name: String
        public var aliasOf: String?
        /// Features (libvirt names) this accelerator cannot provide for the model. A name
        /// the CPU map does not know stays in QEMU's spelling, as libvirt keeps it, so that
        /// the model still counts as unusable.
        public var unavailableFeatures: [String]
        public var isDeprecated: Bool

        public init(name: String, aliasOf: String? = nil, unavailableFeatures: [String] = [], isDeprecated: Bool = false) {
            self.name = name
            self.aliasOf = aliasOf
            self.unavailableFeatures = unavailableFeatures
            self.isDeprecated = isDeprecated
        }

        public var isUsable: Bool { unavailableFeatures.isEmpty }
    }

    public var binary: String
    /// size/mtime/inode of the binary when probed.
    public var binaryIdentity: String
    public var version: String
    public var accelerator: Accelerator
    public var machines: [Machine]
    public var cpuModels: [CPUModel]
    /// The host-model CPU (QEMU's migratable `host`/`max` expansion, decoded on the map).
    public var hostModel: CPUDefinition?
    /// Every feature (libvirt names) QEMU can enable under this accelerator.
    public var availableFeatures: [String]
    /// Features QEMU turns on under this accelerator even when the CPU asks for them off.
    public var forcedFeatures: [String]
    /// Features QEMU considers unmigratable.
    public var unmigratableFeatures: [String]
    /// What else the probe's result depends on besides the binary: the probe's own version
    /// and the CPU map it translated names with. A cache whose key differs is probed again.
    public var probeKey: String

    public init(
        binary: String, binaryIdentity: String, version: String, accelerator: Accelerator,
        machines: [Machine] = [], cpuModels: [CPUModel] = [], hostModel: CPUDefinition? = nil,
        availableFeatures: [String] = [], forcedFeatures: [String] = [], unmigratableFeatures: [String] = [],
        probeKey: String = ""
    ) {
        self.binary = binary
        self.binaryIdentity = binaryIdentity
        self.version = version
        self.accelerator = accelerator
        self.machines = machines
        self.cpuModels = cpuModels
        self.hostModel = hostModel
        self.availableFeatures = availableFeatures
        self.forcedFeatures = forcedFeatures
        self.unmigratableFeatures = unmigratableFeatures
        self.probeKey = probeKey
    }

    /// The versioned machine type a name resolves to (`pc` → `pc-i440fx-7.2`), or nil when
    /// this QEMU has no such machine. nil asks for the default machine.
    public func resolveMachine(_ name: String?) -> String? {
        guard let name else {
            return machines.first(where: \.isDefault).map { $0.canonical ?? $0.name }
        }
        guard let machine = machines.first(where: { $0.name == name }) else { return nil }
        return machine.canonical ?? machine.name
    }

    /// The model called `name`.
    public func cpuModel(named name: String) -> CPUModel? {
        cpuModels.first { $0.name == name }
    }
}

extension QEMUCapabilities {
    /// The cache file form: an XML element of Keel's own.
    public var xmlElement: XMLElement {
        var root = XMLElement("keel-qemu-capabilities", attributes: [
            XMLAttribute("format", "1"), XMLAttribute("binary", binary), XMLAttribute("identity", binaryIdentity),
            XMLAttribute("version", version), XMLAttribute("accelerator", accelerator.rawValue),
        ])
        if !probeKey.isEmpty { root.setAttribute("probe", probeKey) }
        for machine in machines {
            var element = XMLElement("machine", attributes: [XMLAttribute("name", machine.name)])
            element.setAttribute("canonical", machine.canonical)
            if machine.isDefault { element.setAttribute("default", "yes") }
            element.setAttribute("max-cpus", machine.maxCPUs.map(String.init))
            if machine.isDeprecated { element.setAttribute("deprecated", "yes") }
            root.append(element)
        }
        for model in cpuModels {
            var element = XMLElement("cpu-model", attributes: [XMLAttribute("name", model.name)])
            element.setAttribute("alias-of", model.aliasOf)
            if model.isDeprecated { element.setAttribute("deprecated", "yes") }
            for feature in model.unavailableFeatures {
                element.append(XMLElement("blocker", attributes: [XMLAttribute("name", feature)]))
            }
            root.append(element)
        }
        if let hostModel {
            // A guest <cpu> carries no signature; the host CPU of `keel capabilities` needs it.
            var element = XMLElement("host-model", children: [.element(hostModel.xmlElement)])
            if let signature = hostModel.signature {
                element.setAttribute("family", String(signature.family))
                element.setAttribute("model", String(signature.model))
                element.setAttribute("stepping", String(signature.stepping))
            }
            root.append(element)
        }
        for (name, list) in [("available", availableFeatures), ("forced", forcedFeatures), ("unmigratable", unmigratableFeatures)] {
            root.append(XMLElement("features", attributes: [XMLAttribute("kind", name)], children: list.map {
                .element(XMLElement("feature", attributes: [XMLAttribute("name", $0)]))
            }))
        }
        return root
    }

    /// Reads the cache file form.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` when the element is not a capabilities cache of
    ///   a format Keel knows.
    public init(xml root: XMLElement) throws {
        guard root.name == "keel-qemu-capabilities", root.attribute("format") == "1",
              let binary = root.attribute("binary"), let identity = root.attribute("identity"),
              let version = root.attribute("version"),
              let accelerator = root.attribute("accelerator").flatMap(Accelerator.init(rawValue:))
        else {
            throw QEMUError(.invalidArgument, "not a Keel QEMU capabilities cache")
        }
        self.init(binary: binary, binaryIdentity: identity, version: version, accelerator: accelerator, probeKey: root.attribute("probe") ?? "")
        machines = root.children(named: "machine").compactMap { element in
            element.attribute("name").map {
                Machine(
                    name: $0, canonical: element.attribute("canonical"), isDefault: element.attribute("default") == "yes",
                    maxCPUs: element.attribute("max-cpus").flatMap { Int($0) }, isDeprecated: element.attribute("deprecated") == "yes"
                )
            }
        }
        cpuModels = root.children(named: "cpu-model").compactMap { element in
            element.attribute("name").map {
                CPUModel(
                    name: $0, aliasOf: element.attribute("alias-of"),
                    unavailableFeatures: element.children(named: "blocker").compactMap { $0.attribute("name") },
                    isDeprecated: element.attribute("deprecated") == "yes"
                )
            }
        }
        if let element = root.child("host-model"), let cpu = element.child("cpu") {
            hostModel = try? CPUDefinition(xml: cpu, as: .guest)
            if let family = element.attribute("family").flatMap({ UInt32($0) }),
               let model = element.attribute("model").flatMap({ UInt32($0) }),
               let stepping = element.attribute("stepping").flatMap({ UInt32($0) }) {
                hostModel?.signature = CPUDefinition.Signature(family: family, model: model, stepping: stepping)
            }
        }
        for element in root.children(named: "features") {
            let names = element.children(named: "feature").compactMap { $0.attribute("name") }
            switch element.attribute("kind") {
            case "available": availableFeatures = names
            case "forced": forcedFeatures = names
            case "unmigratable": unmigratableFeatures = names
            default: break
            }
        }
    }
}
