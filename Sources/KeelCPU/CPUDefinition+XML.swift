import KeelXML

extension CPUDefinition {
    /// How to decide whether a parsed `<cpu>` is a host or a guest CPU.
    public enum ParseKind: Sendable {
        /// A host CPU iff it has `<arch>` (libvirt's VIR_CPU_TYPE_AUTO).
        case auto
        case host
        case guest
    }

    /// The architectures libvirt knows by name (virArch).
    static let knownArchitectures: Set<String> = [
        "i686", "x86_64", "aarch64", "armv6l", "armv7l", "armv7b", "alpha", "cris", "lm32", "loongarch64",
        "m68k", "microblaze", "microblazeel", "mips", "mipsel", "mips64", "mips64el", "openrisc",
        "parisc", "parisc64", "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb", "riscv32", "riscv64",
        "s390", "s390x", "sh4", "sh4eb", "sparc", "sparc64", "unicore32", "xtensa", "xtensaeb",
    ]

    /// Parses a `<cpu>` element with libvirt 9.0's rules (virCPUDefParseXML).
    ///
    /// - Parameters:
    ///   - element: the `<cpu>` element.
    ///   - kind: whether to treat it as a host or guest CPU, or decide by `<arch>`.
    /// - Throws: `CPUError` with libvirt's message for every input libvirt rejects.
    public init(xml element: XMLElement, as kind: ParseKind = .auto) throws {
        guard element.name == "cpu" else {
            throw CPUError(.invalidXML, "XML does not contain expected 'cpu' element")
        }
        let type: Kind
        switch kind {
        case .host: type = .host
        case .guest: type = .guest
        case .auto:
            if element.child("arch") != nil {
                if element.attribute("match") != nil {
                    throw CPUError(.invalidXML, "'arch' element cannot be used inside 'cpu' element with 'match' attribute'")
                }
                type = .host
            } else {
                type = .guest
            }
        }
        self.init(type: type)

        if let value = element.attribute("mode") {
            if type == .host {
                throw CPUError(.unsupported, "Attribute mode is only allowed for guest CPU")
            }
            guard let mode = Mode(rawValue: value) else {
                throw CPUError(.unsupported, "Invalid mode attribute '\(value)'")
            }
            self.mode = mode
        }
        if let value = element.attribute("migratable") {
            guard let on = Self.parseSwitch(value) else {
                throw CPUError(.invalidXML, "Invalid value for attribute 'migratable' in element 'cpu': '\(value)'.")
            }
            if mode != .hostPassthrough && mode != .maximum {
                throw CPUError(.unsupported, "Attribute migratable is only allowed for 'host-passthrough' / 'maximum' CPU mode")
            }
            migratable = on
        }
        if type == .guest {
            if let value = element.attribute("match") {
                guard let match = Match(rawValue: value) else {
                    throw CPUError(.invalidXML, "Invalid value for attribute 'match' in element 'cpu': '\(value)'.")
                }
                self.match = match
            }
            if let value = element.attribute("check") {
                guard let check = Check(rawValue: value) else {
                    throw CPUError(.invalidXML, "Invalid value for attribute 'check' in element 'cpu': '\(value)'.")
                }
                self.check = check
            }
        }
        if type == .host {
            guard let archElement = element.child("arch") else {
                throw CPUError(.invalidXML, "Missing CPU architecture")
            }
            let arch = archElement.text
            guard Self.knownArchitectures.contains(arch) else {
                throw CPUError(.unsupported, "Unknown architecture \(arch)")
            }
            self.arch = arch
            if let microcode = element.child("microcode"), let version = microcode.attribute("version") {
                guard let value = UInt32(version) else {
                    throw CPUError(.unsupported, "invalid microcode version")
                }
                microcodeVersion = value
            }
            if let node = element.child("signature") {
                let family = try Self.unsignedAttribute(node, "family", required: true, nonZero: true) ?? 0
                let model = try Self.unsignedAttribute(node, "model", required: true) ?? 0
                let stepping = try Self.unsignedAttribute(node, "stepping", required: true) ?? 0
                signature = Signature(family: family, model: model, stepping: stepping)
            }
            if let node = element.children(named: "counter").first(where: { $0.attribute("name") == "tsc" }) {
                guard let text = node.attribute("frequency") else {
                    throw CPUError(.invalidXML, "Missing required attribute 'frequency' in element 'counter'")
                }
                guard let frequency = UInt64(text) else {
                    throw CPUError(.invalidXML, "Invalid value for attribute 'frequency' in element 'counter': '\(text)'. Expected non-negative integer value")
                }
                var scaling: Bool?
                if let value = node.attribute("scaling") {
                    switch value {
                    case "yes": scaling = true
                    case "no": scaling = false
                    default:
                        throw CPUError(.invalidXML, "Invalid value for attribute 'scaling' in element 'counter': '\(value)'.")
                    }
                }
                tsc = TSCCounter(frequency: frequency, scaling: scaling)
            }
        }
        // libvirt reads string(./model[1]): an empty <model/> counts as no model.
        if let modelElement = element.child("model") {
            let name = modelElement.text
            model = name.isEmpty ? nil : name
        }
        if model == nil && type == .host {
            throw CPUError(.invalidXML, "Missing CPU model name")
        }
        if type == .guest && !isPassthrough, let modelElement = element.child("model") {
            if let value = modelElement.attribute("fallback") {
                guard let fallback = Fallback(rawValue: value) else {
                    throw CPUError(.unsupported, "Invalid fallback attribute")
                }
                self.fallback = fallback
            }
            if let value = modelElement.attribute("vendor_id"), !value.isEmpty {
                guard value.utf8.count == 12 else {
                    throw CPUError(.invalidXML, "vendor_id must be exactly 12 characters long")
                }
                if value.contains(",") {
                    throw CPUError(.invalidXML, "vendor id is invalid")
                }
                vendorID = value
            }
        }
        if let vendorElement = element.child("vendor") {
            let name = vendorElement.text
            vendor = name.isEmpty ? nil : name
        }
        if vendor != nil && model == nil {
            throw CPUError(.invalidXML, "CPU vendor specified without CPU model")
        }
        if let node = element.child("topology") {
            let sockets = try Self.unsignedAttribute(node, "sockets", required: true, nonZero: true) ?? 1
            let dies = try Self.unsignedAttribute(node, "dies", required: false, nonZero: true) ?? 1
            let cores = try Self.unsignedAttribute(node, "cores", required: true, nonZero: true) ?? 1
            let threads = try Self.unsignedAttribute(node, "threads", required: true, nonZero: true) ?? 1
            topology = Topology(sockets: sockets, dies: dies, cores: cores, threads: threads)
        }
        let featureElements = element.children(named: "feature")
        if !featureElements.isEmpty && model == nil && mode == .custom {
            throw CPUError(.invalidXML, "Non-empty feature list specified without CPU model")
        }
        var seen = Set<String>()
        features.reserveCapacity(featureElements.count)
        for node in featureElements {
            var policy: Policy?
            if type == .guest {
                if let value = node.attribute("policy") {
                    guard let parsed = Policy(rawValue: value) else {
                        throw CPUError(.unsupported, "Invalid CPU feature policy")
                    }
                    policy = parsed
                } else {
                    policy = .require
                }
            }
            guard let name = node.attribute("name"), !name.isEmpty else {
                throw CPUError(.invalidXML, "Invalid CPU feature name")
            }
            guard seen.insert(name).inserted else {
                throw CPUError(.invalidXML, "CPU feature '\(name)' specified more than once")
            }
            features.append(Feature(name, policy))
        }
        let caches = element.children(named: "cache")
        if caches.count > 1 {
            throw CPUError(.invalidXML, "at most one CPU cache element may be specified")
        }
        if let node = caches.first {
            var level: Int?
            if let text = node.attribute("level") {
                guard let value = Int(text), value >= 0 else {
                    throw CPUError(.invalidXML, "Invalid value for attribute 'level' in element 'cache': '\(text)'. Expected non-negative value")
                }
                guard (1...3).contains(value) else {
                    throw CPUError(.invalidXML, "invalid CPU cache level, must be in range [1,3]")
                }
                level = value
            }
            guard let text = node.attribute("mode") else {
                throw CPUError(.invalidXML, "Missing required attribute 'mode' in element 'cache'")
            }
            guard let mode = Cache.Mode(rawValue: text) else {
                throw CPUError(.invalidXML, "Invalid value for attribute 'mode' in element 'cache': '\(text)'.")
            }
            cache = Cache(level: level, mode: mode)
        }
        if let node = element.child("maxphysaddr") {
            guard let text = node.attribute("mode") else {
                throw CPUError(.invalidXML, "Missing required attribute 'mode' in element 'maxphysaddr'")
            }
            guard let mode = MaxPhysAddr.Mode(rawValue: text) else {
                throw CPUError(.invalidXML, "Invalid value for attribute 'mode' in element 'maxphysaddr': '\(text)'.")
            }
            var bits: Int?
            if let value = node.attribute("bits") {
                guard let parsed = Int(value), parsed >= 0 else {
                    throw CPUError(.invalidXML, "Invalid value for attribute 'bits' in element 'maxphysaddr': '\(value)'. Expected non-negative value")
                }
                bits = parsed
            }
            maxPhysAddr = MaxPhysAddr(mode: mode, bits: bits)
        }
        numa = element.child("numa")
    }

    /// Parses the first `<cpu>` of an XML document given as text.
    public init(xmlString: String, as kind: ParseKind = .auto) throws {
        let root: XMLElement
        do {
            root = try XMLParser.parse(xmlString)
        } catch let error as XMLError {
            throw CPUError(.invalidXML, error.description, cause: error)
        }
        try self.init(xml: root, as: kind)
    }

    private static func parseSwitch(_ value: String) -> Bool? {
        switch value {
        case "on": return true
        case "off": return false
        default: return nil
        }
    }

    private static func unsignedAttribute(_ node: XMLElement, _ name: String, required: Bool, nonZero: Bool = false) throws -> UInt32? {
        guard let text = node.attribute(name) else {
            if required {
                throw CPUError(.invalidXML, "Missing required attribute '\(name)' in element '\(node.name)'")
            }
            return nil
        }
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = UInt32(text) else {
            throw CPUError(.invalidXML, "Invalid value for attribute '\(name)' in element '\(node.name)': '\(text)'. Expected non-negative integer value")
        }
        if nonZero && value == 0 {
            throw CPUError(.invalidXML, "Invalid value for attribute '\(name)' in element '\(node.name)': Zero is not permitted")
        }
        return value
    }
}

extension CPUDefinition {
    /// The `<cpu>` element in libvirt's layout and order (virCPUDefFormatBufFull).
    public var xmlElement: XMLElement {
        var element = XMLElement("cpu")
        if type == .guest, let mode, mode != .custom || model != nil {
            element.attributes.append(XMLAttribute("mode", mode.rawValue))
            if mode == .custom {
                element.attributes.append(XMLAttribute("match", match.rawValue))
            }
            if check != .default {
                element.attributes.append(XMLAttribute("check", check.rawValue))
            }
            if isPassthrough, let migratable {
                element.attributes.append(XMLAttribute("migratable", migratable ? "on" : "off"))
            }
        }
        if type == .host, let arch {
            element.append(XMLElement("arch", text: arch))
        }
        let formatModel = mode == .custom || mode == .hostModel || (type == .host)
        if formatModel && (model != nil || vendorID != nil) {
            var modelElement = XMLElement("model")
            if type == .guest && model != nil {
                modelElement.attributes.append(XMLAttribute("fallback", fallback.rawValue))
            }
            if type == .guest, let vendorID {
                modelElement.attributes.append(XMLAttribute("vendor_id", vendorID))
            }
            if let model {
                modelElement.children = [.text(model)]
            }
            element.append(modelElement)
        }
        if formatModel, let vendor {
            element.append(XMLElement("vendor", text: vendor))
        }
        if type == .host, let microcodeVersion, microcodeVersion != 0 {
            element.append(XMLElement("microcode", attributes: [XMLAttribute("version", String(microcodeVersion))]))
        }
        if type == .host, let signature, signature.family != 0 {
            element.append(XMLElement("signature", attributes: [
                XMLAttribute("family", String(signature.family)),
                XMLAttribute("model", String(signature.model)),
                XMLAttribute("stepping", String(signature.stepping)),
            ]))
        }
        if type == .host, let tsc {
            var counter = XMLElement("counter", attributes: [XMLAttribute("name", "tsc"), XMLAttribute("frequency", String(tsc.frequency))])
            if let scaling = tsc.scaling {
                counter.attributes.append(XMLAttribute("scaling", scaling ? "yes" : "no"))
            }
            element.append(counter)
        }
        if let topology {
            element.append(XMLElement("topology", attributes: [
                XMLAttribute("sockets", String(topology.sockets)),
                XMLAttribute("dies", String(topology.dies)),
                XMLAttribute("cores", String(topology.cores)),
                XMLAttribute("threads", String(topology.threads)),
            ]))
        }
        if let cache {
            var node = XMLElement("cache")
            if let level = cache.level {
                node.attributes.append(XMLAttribute("level", String(level)))
            }
            node.attributes.append(XMLAttribute("mode", cache.mode.rawValue))
            element.append(node)
        }
        if let maxPhysAddr {
            var node = XMLElement("maxphysaddr", attributes: [XMLAttribute("mode", maxPhysAddr.mode.rawValue)])
            if let bits = maxPhysAddr.bits {
                node.attributes.append(XMLAttribute("bits", String(bits)))
            }
            element.append(node)
        }
        for feature in features {
            if type == .guest {
                element.append(XMLElement("feature", attributes: [
                    XMLAttribute("policy", feature.effectivePolicy.rawValue), XMLAttribute("name", feature.name),
                ]))
            } else {
                element.append(XMLElement("feature", attributes: [XMLAttribute("name", feature.name)]))
            }
        }
        if let numa {
            element.append(numa)
        }
        return element
    }

    /// The definition as libvirt formats it, ending in a newline.
    public func formatted(indent: Int = 0) -> String {
        xmlElement.formatted(indent: indent)
    }
}
