import Glibc
import KeelCPU
import KeelDomain
import KeelQMP
import KeelXML

/// The QEMU driver: defines, starts, saves and restores domains on a state directory. Runs
/// in-process (the CLI's embedded mode); QEMU processes outlive it and later drivers reconnect
/// through the QMP sockets in the state directory.
public final class Driver: Sendable {
    public let store: DomainStore
    public let configuration: HostConfiguration
    public let map: CPUMap
    /// The version Keel writes into ABI records.
    public static let version = "0.1.0"

    /// Opens (creating if needed) the state directory.
    ///
    /// - Parameters:
    ///   - stateDirectory: where definitions, status files and sockets live.
    ///   - map: the CPU map; the built-in map by default.
    ///   - configuration: overrides `STATE/config.xml`.
    ///   - cache: keeps parsed state files in memory while they are unchanged (a daemon).
    public init(stateDirectory: String, map: CPUMap? = nil, configuration: HostConfiguration? = nil, cache: ParsedFileCache? = nil) throws {
        store = try DomainStore(root: stateDirectory, cache: cache)
        self.configuration = try configuration ?? HostConfiguration.load(path: store.configurationPath)
        do {
            self.map = try map ?? CPUMap.builtin.get()
        } catch let error as CPUError {
            throw QEMUError(.invalidState, "cannot load the CPU map: \(error.message)")
        }
    }

    /// This QEMU's capabilities under `accelerator`, from the cache or a fresh probe.
    public func capabilities(_ accelerator: QEMUCapabilities.Accelerator) async throws -> QEMUCapabilities {
        try await CapabilitiesProbe.capabilities(
            binary: configuration.emulator, accelerator: accelerator, cacheDirectory: store.capabilitiesCache, map: map
        )
    }

    // MARK: definitions

    /// Defines (or redefines) a domain: validates it, expands its machine type to a versioned
    /// one and stores it.
    ///
    /// - Throws: `QEMUError` naming the problem; a running domain keeps its definition.
    @discardableResult
    public func define(xml: String) async throws -> DomainDefinition {
        var definition: DomainDefinition
        do {
            definition = try DomainDefinition(xmlString: xml)
        } catch let error as DomainError {
            throw QEMUError(.invalidArgument, error.message)
        }
        try DomainStore.validate(name: definition.name)
        guard let accelerator = QEMUCapabilities.Accelerator(domainType: definition.virtType) else {
            throw QEMUError(.unsupported, "domain type '\(definition.virtType)' is not supported (kvm, qemu)")
        }
        if let existing = try store.definition(definition.name), let uuid = existing.uuid, definition.uuid != nil, uuid != definition.uuid {
            throw QEMUError(.alreadyExists, "domain '\(definition.name)' is already defined with uuid \(uuid)")
        }
        if definition.uuid == nil {
            definition = try DomainDefinition(xml: Self.addingUUID(to: definition.xml, uuid: try store.definition(definition.name)?.uuid ?? Self.randomUUID()))
        }
        if definition.os.type != "hvm" {
            throw QEMUError(.unsupported, "OS type '\(definition.os.type)' is not supported (hvm)")
        }
        let capabilities = try await capabilities(accelerator)
        guard let machine = capabilities.resolveMachine(definition.os.machine) else {
            throw QEMUError(.unsupported, "machine type '\(definition.os.machine ?? "")' is not supported by QEMU \(capabilities.version)")
        }
        // The versioned machine and the implicit devices written down, parsed once.
        definition = try DomainDefinition(xml: Self.explicitImplicitDevices(Self.settingMachine(of: definition.xml, to: machine)))
        try store.save(definition)
        return definition
    }

    /// Removes a domain's definition. A running domain keeps running (as a transient one).
    public func undefine(name: String) throws {
        let lock = try DomainLock.acquire(store: store, name: name, job: "undefine")
        defer { withExtendedLifetime(lock) {} }
        guard try store.definition(name) != nil else {
            throw QEMUError(.notFound, "domain '\(name)' is not defined")
        }
        store.removeDefinition(name)
    }

    // MARK: queries

    public enum State: String, Sendable {
        case shutoff, running, paused, crashed
    }

    public struct Summary: Sendable {
        public var name: String
        public var uuid: String?
        public var state: State
        public var persistent: Bool
        public var pid: Int32?
    }

    /// The state of a domain: the status file checked against the live process.
    public func state(of name: String) throws -> (State, DomainStatus?) {
        guard let status = try store.status(name) else { return (.shutoff, nil) }
        let process = QEMUProcess(pid: status.pid, qmpSocket: status.qmpSocket)
        guard process.isAlive else { return (.crashed, status) }
        return (status.state == .paused ? .paused : .running, status)
    }

    /// All defined and running domains.
    public func list() throws -> [Summary] {
        var names = Set(store.names())
        for file in POSIXFile.list(store.root + "/run") where file.hasSuffix(".status.xml") {
            names.insert(String(file.dropLast(".status.xml".count)))
        }
        return try names.sorted().map { name in
            let (state, status) = try self.state(of: name)
            let definition = try store.definition(name)
            return Summary(name: name, uuid: status?.live.uuid ?? definition?.uuid, state: state, persistent: definition != nil, pid: state == .shutoff ? nil : status?.pid)
        }
    }

    /// The domain XML: live (with the updated CPU) when running, else the definition.
    ///
    /// - Parameters:
    ///   - inactive: the persistent definition even when running.
    ///   - migratable: the live definition with the original CPU swapped in.
    public func xml(name: String, inactive: Bool = false, migratable: Bool = false) throws -> DomainDefinition {
        let (state, status) = try self.state(of: name)
        if !inactive, let status, state == .running || state == .paused {
            return migratable ? status.migratableDefinition : status.live
        }
        guard let definition = try store.definition(name) else {
            throw QEMUError(.notFound, "domain '\(name)' not found")
        }
        return definition
    }

    static func randomUUID() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            _ = read(fd, &bytes, 16)
            close(fd)
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let hex = bytes.map { String($0, radix: 16).leftPadded(2) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }

    static func addingUUID(to root: XMLElement, uuid: String) -> XMLElement {
        var root = root
        let index = root.children.firstIndex {
            if case .element(let element) = $0 { return element.name == "name" }
            return false
        } ?? 0
        root.children.insert(.element(XMLElement("uuid", text: uuid)), at: index + 1)
        return root
    }

    /// libvirt gives a PC machine a USB controller and a memory balloon unless the XML says
    /// `model='none'`; Keel gives it neither, and writes that down so that libvirt reading a
    /// Keel definition (a save image, a migration) builds the same machine.
    static func explicitImplicitDevices(_ root: XMLElement) -> XMLElement {
        var root = root
        var devices = root.child("devices") ?? XMLElement("devices")
        if !devices.children(named: "controller").contains(where: { $0.attribute("type") == "usb" }) {
            let usb = XMLElement("controller", attributes: [XMLAttribute("type", "usb"), XMLAttribute("index", "0"), XMLAttribute("model", "none")])
            let firstAfterDisks = devices.children.firstIndex {
                if case .element(let element) = $0 { return !["emulator", "disk", "controller"].contains(element.name) }
                return false
            } ?? devices.children.count
            devices.children.insert(.element(usb), at: firstAfterDisks)
        }
        if devices.child("memballoon") == nil {
            devices.append(XMLElement("memballoon", attributes: [XMLAttribute("model", "none")]))
        }
        if let index = root.children.firstIndex(where: { if case .element(let element) = $0 { return element.name == "devices" }; return false }) {
            root.children[index] = .element(devices)
        } else {
            root.append(devices)
        }
        return root
    }

    static func settingMachine(of root: XMLElement, to machine: String) -> XMLElement {
        var root = root
        for (index, child) in root.children.enumerated() {
            guard case .element(var os) = child, os.name == "os" else { continue }
            for (typeIndex, osChild) in os.children.enumerated() {
                guard case .element(var type) = osChild, type.name == "type" else { continue }
                type.setAttribute("machine", machine)
                os.children[typeIndex] = .element(type)
            }
            root.children[index] = .element(os)
        }
        return root
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
