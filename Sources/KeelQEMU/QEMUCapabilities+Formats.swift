import KeelCPU
import KeelXML

extension QEMUCapabilities {
    /// The CPU models of the custom mode: QEMU's models that the CPU map also knows, in
    /// QEMU's order, without `host` (libvirt's virQEMUCapsFillDomainCPUCaps).
    public func customModels(map: CPUMap) -> [CPUModel] {
        cpuModels.filter { $0.name != "host" && map.model(named: $0.name) != nil }
    }

    /// Whether a CPU mode can be used with this QEMU and accelerator
    /// (virQEMUCapsIsCPUModeSupported): host-passthrough needs KVM, maximum QEMU's `max`
    /// model, host-model a host model, custom at least one model.
    public func supports(_ mode: CPUDefinition.Mode, map: CPUMap) -> Bool {
        switch mode {
        case .hostPassthrough: accelerator == .kvm && cpuModel(named: "host") != nil
        case .maximum: cpuModel(named: "max") != nil
        case .hostModel: hostModel != nil
        case .custom: !customModels(map: map).isEmpty
        }
    }

    /// The host CPU as `keel capabilities` shows it: this accelerator's features decoded as a
    /// host CPU (the model must be a subset of them), with vendor and signature. nil when the
    /// probe found no vendor or nothing fits.
    public func hostCPU(map: CPUMap) -> CPUDefinition? {
        guard let hostModel else { return nil }
        let signature = hostModel.signature.map {
            CapabilitiesProbe.makeSignature(family: $0.family, model: $0.model, stepping: $0.stepping)
        } ?? 0
        let input = CPUMap.DecodeInput(bits: map.bits(ofFeatures: availableFeatures), vendor: hostModel.vendor, signature: signature)
        guard var cpu = try? map.decode(input, as: .host) else { return nil }
        cpu.arch = "x86_64"
        return cpu
    }

    /// libvirt 9.0's `<domainCapabilities>` (virDomainCapsFormat) for the parts Keel knows:
    /// path, domain, machine, arch, the vCPU limit and `<cpu>` with its four modes.
    ///
    /// - Parameters:
    ///   - machine: the machine type (an alias is resolved); nil for the default one.
    ///   - map: the CPU map, for the custom models' vendors.
    /// - Throws: `QEMUError` `.unsupported` for a machine type this QEMU lacks.
    public func domainCapabilitiesXML(machine: String?, map: CPUMap) throws -> XMLElement {
        guard let resolved = resolveMachine(machine) else {
            throw QEMUError(.unsupported, "the machine '\(machine ?? "")' is not supported by emulator '\(binary)'")
        }
        var root = XMLElement("domainCapabilities")
        root.append(XMLElement("path", text: binary))
        root.append(XMLElement("domain", text: accelerator.domainType))
        root.append(XMLElement("machine", text: resolved))
        root.append(XMLElement("arch", text: "x86_64"))
        if let maxCPUs = machines.first(where: { $0.name == resolved })?.maxCPUs, maxCPUs > 0 {
            root.append(XMLElement("vcpu", attributes: [XMLAttribute("max", String(maxCPUs))]))
        }
        var cpu = XMLElement("cpu")
        cpu.append(migratableMode(.hostPassthrough, enumName: "hostPassthroughMigratable", supported: supports(.hostPassthrough, map: map)))
        cpu.append(migratableMode(.maximum, enumName: "maximumMigratable", supported: supports(.maximum, map: map)))
        if let hostModel {
            cpu.append(XMLElement("mode", attributes: modeAttributes(.hostModel, true), children: hostModel.xmlElement.children))
        } else {
            cpu.append(XMLElement("mode", attributes: modeAttributes(.hostModel, false)))
        }
        let custom = customModels(map: map)
        if custom.isEmpty {
            cpu.append(XMLElement("mode", attributes: modeAttributes(.custom, false)))
        } else {
            var mode = XMLElement("mode", attributes: modeAttributes(.custom, true))
            for model in custom {
                var element = XMLElement("model", attributes: [XMLAttribute("usable", model.isUsable ? "yes" : "no")], text: model.name)
                // 9.0 writes deprecated only when it is set, and 'unknown' for a model without vendor.
                if model.isDeprecated { element.setAttribute("deprecated", "yes") }
                element.setAttribute("vendor", map.model(named: model.name)?.vendor ?? "unknown")
                mode.append(element)
            }
            cpu.append(mode)
        }
        root.append(cpu)
        return root
    }

    private func modeAttributes(_ mode: CPUDefinition.Mode, _ supported: Bool) -> [XMLAttribute] {
        [XMLAttribute("name", mode.rawValue), XMLAttribute("supported", supported ? "yes" : "no")]
    }

    private func migratableMode(_ mode: CPUDefinition.Mode, enumName: String, supported: Bool) -> XMLElement {
        guard supported else { return XMLElement("mode", attributes: modeAttributes(mode, false)) }
        let values = XMLElement("enum", attributes: [XMLAttribute("name", enumName)], children: [
            .element(XMLElement("value", text: "on")), .element(XMLElement("value", text: "off")),
        ])
        return XMLElement("mode", attributes: modeAttributes(mode, true), children: [.element(values)])
    }
}

/// libvirt's `<capabilities>` document for one x86_64 QEMU: the host (UUID and CPU) and one
/// guest architecture with the machine types and the domain types this host can run.
public struct HostCapabilities: Sendable {
    public var hostUUID: String?
    public var hostCPU: CPUDefinition?
    /// The capabilities per accelerator; TCG (`qemu`) first, as libvirt lists it.
    public var guests: [QEMUCapabilities]

    public init(hostUUID: String?, hostCPU: CPUDefinition?, guests: [QEMUCapabilities]) {
        self.hostUUID = hostUUID
        self.hostCPU = hostCPU
        self.guests = guests.sorted { $0.accelerator == .tcg && $1.accelerator != .tcg }
    }

    /// The machine types the guest section lists: KVM's when KVM works, else TCG's
    /// (virQEMUCapsGetMachineTypesCaps).
    public var machines: [QEMUCapabilities.Machine] {
        (guests.first { $0.accelerator == .kvm } ?? guests.first)?.machines ?? []
    }

    /// The document in libvirt 9.0's layout (virCapabilitiesFormatXML), for the parts Keel
    /// knows.
    public var xmlElement: XMLElement {
        var root = XMLElement("capabilities")
        var host = XMLElement("host")
        if let hostUUID { host.append(XMLElement("uuid", text: hostUUID)) }
        var cpu = XMLElement("cpu")
        cpu.append(XMLElement("arch", text: "x86_64"))
        if var hostCPU {
            // The <arch> is written above, where virCapabilitiesFormatHostXML puts it.
            hostCPU.arch = nil
            cpu.children += hostCPU.xmlElement.children
        }
        host.append(cpu)
        root.append(host)
        guard let emulator = guests.first?.binary else { return root }
        var guest = XMLElement("guest")
        guest.append(XMLElement("os_type", text: "hvm"))
        var arch = XMLElement("arch", attributes: [XMLAttribute("name", "x86_64")])
        arch.append(XMLElement("wordsize", text: "64"))
        arch.append(XMLElement("emulator", text: emulator))
        for machine in machines {
            var element = XMLElement("machine", text: machine.name)
            element.setAttribute("canonical", machine.canonical)
            element.setAttribute("maxCpus", machine.maxCPUs.flatMap { $0 > 0 ? String($0) : nil })
            if machine.isDeprecated { element.setAttribute("deprecated", "yes") }
            arch.append(element)
        }
        for capabilities in guests {
            arch.append(XMLElement("domain", attributes: [XMLAttribute("type", capabilities.accelerator.domainType)]))
        }
        guest.append(arch)
        root.append(guest)
        return root
    }
}

extension HostCapabilities {
    /// This host's UUID: `STATE/host-uuid` when it holds one (so that two state directories
    /// on one machine can be two hosts), else `/etc/machine-id` written as a UUID, else a
    /// random one.
    public static func hostUUID(stateDirectory: String) -> String {
        for (path, text) in [(stateDirectory + "/host-uuid", true), ("/etc/machine-id", false)] {
            guard let content = try? POSIXFile.readString(path) else { continue }
            let hex = content.filter { $0.isHexDigit }.lowercased()
            let trimmed = content.filter { !$0.isWhitespace }
            // host-uuid may be written with dashes; machine-id is 32 bare hex digits.
            if hex.count == 32 && (text ? trimmed.count == 36 || trimmed.count == 32 : trimmed.count == 32) {
                return formatUUID(hex)
            }
        }
        var generator = SystemRandomNumberGenerator()
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        return formatUUID(bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
    }

    private static func formatUUID(_ hex: String) -> String {
        let characters = Array(hex)
        return [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { String(characters[$0]) }.joined(separator: "-")
    }
}
