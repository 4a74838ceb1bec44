import KeelCPU
import KeelXML

/// A domain definition: the whole `<domain>` tree, kept as written, with a typed view of the
/// parts Keel interprets. Elements Keel does not interpret survive every round trip.
public struct DomainDefinition: Sendable, Hashable {
    public struct OS: Sendable, Hashable {
        public var type: String
        public var arch: String?
        public var machine: String?
        public var kernel: String?
        public var initrd: String?
        public var cmdline: String?
    }

    public struct Disk: Sendable, Hashable {
        public var device: String
        public var bus: String?
        public var target: String
        public var source: String?
        public var format: String?
        public var readonly: Bool
        public var serial: String?
    }

    /// The tree as parsed; `xml` regenerates it with the typed changes applied.
    public private(set) var tree: XMLElement
    /// `<domain type>`: kvm or qemu (TCG).
    public var virtType: String
    public var name: String
    public var uuid: String?
    /// `<memory>` in KiB.
    public var memoryKiB: UInt64
    /// `<vcpu>`: the maximum number of vCPUs.
    public var vcpus: UInt32
    public var os: OS
    public var cpu: CPUDefinition?
    public var emulator: String?
    public var disks: [Disk]

    /// Parses a `<domain>` element.
    ///
    /// - Throws: `DomainError` naming the element or attribute at fault, or the `CPUError` of
    ///   an invalid `<cpu>` wrapped as `.invalidXML`.
    public init(xml root: XMLElement) throws {
        guard root.name == "domain" else {
            throw DomainError(.invalidXML, "expecting root element of 'domain', not '\(root.name)'")
        }
        guard let type = root.attribute("type") else {
            throw DomainError(.invalidXML, "missing domain type attribute")
        }
        guard let name = root.child("name")?.text, !name.isEmpty else {
            throw DomainError(.invalidXML, "missing domain name information")
        }
        if name.contains("/") {
            throw DomainError(.invalidXML, "name \(name) cannot contain '/'")
        }
        tree = root
        virtType = type
        self.name = name
        if let uuid = root.child("uuid")?.text {
            guard DomainDefinition.isValidUUID(uuid) else {
                throw DomainError(.invalidXML, "malformed uuid element: '\(uuid)'")
            }
            self.uuid = uuid.lowercased()
        }
        guard let memory = root.child("memory") else {
            throw DomainError(.invalidXML, "missing element memory")
        }
        memoryKiB = try DomainDefinition.kibibytes(memory)
        if let vcpu = root.child("vcpu") {
            guard let count = UInt32(vcpu.text.trimmingSpaces), count > 0 else {
                throw DomainError(.invalidXML, "invalid vcpu count '\(vcpu.text)'")
            }
            vcpus = count
        } else {
            vcpus = 1
        }
        guard let osElement = root.child("os"), let typeElement = osElement.child("type") else {
            throw DomainError(.invalidXML, "missing element os/type")
        }
        os = OS(
            type: typeElement.text.trimmingSpaces,
            arch: typeElement.attribute("arch"),
            machine: typeElement.attribute("machine"),
            kernel: osElement.child("kernel")?.text,
            initrd: osElement.child("initrd")?.text,
            cmdline: osElement.child("cmdline")?.text
        )
        if let cpuElement = root.child("cpu") {
            do {
                cpu = try CPUDefinition(xml: cpuElement, as: .guest)
            } catch let error as CPUError {
                throw DomainError(.invalidXML, error.message)
            }
        }
        let devices = root.child("devices")
        emulator = devices?.child("emulator")?.text
        disks = []
        for disk in devices?.children(named: "disk") ?? [] {
            guard let target = disk.child("target")?.attribute("dev") else {
                throw DomainError(.invalidXML, "missing target information for device")
            }
            let source = disk.child("source")
            disks.append(Disk(
                device: disk.attribute("device") ?? "disk",
                bus: disk.child("target")?.attribute("bus"),
                target: target,
                source: source?.attribute("file") ?? source?.attribute("dev"),
                format: disk.child("driver")?.attribute("type"),
                readonly: disk.child("readonly") != nil,
                serial: disk.child("serial")?.text
            ))
        }
    }

    /// Parses domain XML text.
    public init(xmlString: String) throws {
        let root: XMLElement
        do {
            root = try XMLParser.parse(xmlString)
        } catch let error as XMLError {
            throw DomainError(.invalidXML, error.description)
        }
        try self.init(xml: root)
    }

    /// The definition as an element: the original tree with `<cpu>` replaced by the typed CPU.
    public var xml: XMLElement {
        var root = tree
        let cpuIndex = root.children.firstIndex {
            if case .element(let element) = $0 { return element.name == "cpu" }
            return false
        }
        switch (cpu, cpuIndex) {
        case (let cpu?, let index?):
            root.children[index] = .element(cpu.xmlElement)
        case (let cpu?, nil):
            // libvirt places <cpu> after <features>/<os>; append after <os> when absent.
            let osIndex = root.children.firstIndex {
                if case .element(let element) = $0 { return element.name == "features" || element.name == "os" }
                return false
            }
            root.children.insert(.element(cpu.xmlElement), at: (osIndex ?? root.children.count - 1) + 1)
        case (nil, let index?):
            root.children.remove(at: index)
        case (nil, nil):
            break
        }
        return root
    }

    /// The definition in libvirt's layout.
    public func formatted() -> String {
        xml.formatted()
    }

    /// A copy whose CPU is `cpu` (used to swap the original CPU into saved and migrated XML).
    public func with(cpu: CPUDefinition?) -> DomainDefinition {
        var copy = self
        copy.cpu = cpu
        return copy
    }

    static func isValidUUID(_ text: String) -> Bool {
        let hex = text.filter { $0 != "-" }
        return hex.count == 32 && hex.allSatisfy(\.isHexDigit)
    }

    static func kibibytes(_ element: XMLElement) throws -> UInt64 {
        guard let value = UInt64(element.text.trimmingSpaces) else {
            throw DomainError(.invalidXML, "invalid value '\(element.text)' for element '\(element.name)'")
        }
        let unit = element.attribute("unit") ?? "KiB"
        let bytesPerUnit: UInt64
        switch unit {
        case "b", "bytes": bytesPerUnit = 1
        case "KB": bytesPerUnit = 1000
        case "k", "KiB": bytesPerUnit = 1024
        case "MB": bytesPerUnit = 1_000_000
        case "M", "MiB": bytesPerUnit = 1 << 20
        case "GB": bytesPerUnit = 1_000_000_000
        case "G", "GiB": bytesPerUnit = 1 << 30
        case "TB": bytesPerUnit = 1_000_000_000_000
        case "T", "TiB": bytesPerUnit = 1 << 40
        default:
            throw DomainError(.invalidXML, "unknown unit '\(unit)' for element '\(element.name)'")
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: bytesPerUnit)
        guard !overflow else {
            throw DomainError(.invalidXML, "value '\(value) \(unit)' for element '\(element.name)' is too large")
        }
        return (bytes + 1023) / 1024
    }
}

extension String {
    var trimmingSpaces: String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
