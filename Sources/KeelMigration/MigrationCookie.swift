import KeelCPU
import KeelDomain
import KeelXML

/// The migration cookie: libvirt 9.0's `<qemu-migration>` document that each phase of the
/// protocol hands to the next, plus Keel's ABI record in its own namespace.
///
/// ```
/// <qemu-migration>
///   <name>web-1</name>                                  always: the domain
///   <uuid>5e1f1c52-…</uuid>                              always
///   <hostname>host-a</hostname>                          always: the writer's host
///   <hostuuid>0b9d…</hostuuid>                           always
///   <feature name='persistent'/>                         one per mandatory flag, in bit order
///   <graphics …/> <lockstate …/>                          kept as written; Keel does not use them
///   <domain …>…</domain>                                 persistent definition (mandatory)
///   <network …/> <nbd …/>                                 kept as written
///   <statistics>…</statistics>                           job statistics
///   <cpu mode='custom' match='exact' check='full'>…</cpu>  the updated guest CPU (optional)
///   <capabilities><cap name= auto=/>…</capabilities>     QEMU migration capabilities
///   <blockDirtyBitmaps>…</blockDirtyBitmaps>              kept as written
///   <keel:abi xmlns:keel='https://keel.dev/xmlns/abi/1'>…</keel:abi>   Keel's ABI record
/// </qemu-migration>
/// ```
///
/// The rules are libvirt's (`qemuMigrationCookieXMLParse`): a `<feature name='X'/>` marks data
/// the reader must understand, and a reader refuses a name it does not know ("Unknown migration
/// cookie feature X") or cannot use in the phase at hand ("Unsupported migration cookie feature
/// X"); every other element is optional and a reader ignores what it does not know. `<cpu>` is
/// never mandatory, so older readers start the domain XML's original CPU. libvirt ignores
/// Keel's record (it only looks up its own elements); Keel keeps elements it does not interpret
/// so that a parsed cookie formats back byte for byte.
public struct MigrationCookie: Sendable, Hashable {
    /// libvirt's cookie flags (`qemuMigrationCookieFlag`): bit positions and wire names. ABI:
    /// never renumber or rename.
    public struct Features: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static let graphics = Features(rawValue: 1 << 0)
        public static let lockState = Features(rawValue: 1 << 1)
        public static let persistent = Features(rawValue: 1 << 2)
        public static let network = Features(rawValue: 1 << 3)
        public static let nbd = Features(rawValue: 1 << 4)
        public static let statistics = Features(rawValue: 1 << 5)
        public static let memoryHotplug = Features(rawValue: 1 << 6)
        public static let cpuHotplug = Features(rawValue: 1 << 7)
        public static let cpu = Features(rawValue: 1 << 8)
        /// No mask in libvirt 9.0; the name is kept for the wire.
        public static let allowReboot = Features(rawValue: 1 << 9)
        public static let capabilities = Features(rawValue: 1 << 10)
        public static let blockDirtyBitmaps = Features(rawValue: 1 << 11)

        /// The wire names in bit order. ABI: never change.
        public static let wireNames = [
            "graphics", "lockstate", "persistent", "network", "nbd", "statistics",
            "memory-hotplug", "cpu-hotplug", "cpu", "allowReboot", "capabilities", "block-dirty-bitmaps",
        ]

        /// The flag called `name` on the wire, or nil for a name libvirt 9.0 does not know.
        public init?(name: String) {
            guard let bit = Features.wireNames.firstIndex(of: name) else { return nil }
            self.init(rawValue: 1 << UInt32(bit))
        }

        /// The wire names of the flags in this set, in bit order.
        public var names: [String] {
            Features.wireNames.indices.filter { rawValue & (1 << UInt32($0)) != 0 }.map { Features.wireNames[$0] }
        }
    }

    /// One QEMU migration capability the writer's QEMU supports.
    public struct Capability: Sendable, Hashable {
        public var name: String
        /// Always turned on by the writer (libvirt's `auto='yes'`).
        public var automatic: Bool

        public init(name: String, automatic: Bool) {
            self.name = name
            self.automatic = automatic
        }
    }

    /// The phase whose cookie this is, named after the phase that writes it, and what Keel
    /// accepts as mandatory when reading it.
    ///
    /// | written in | read in | libvirt 9.0 reads | Keel reads |
    /// |---|---|---|---|
    /// | Begin (source) | Prepare (destination) | lockstate, nbd, memory-hotplug, cpu-hotplug, cpu, capabilities, block-dirty-bitmaps | cpu, capabilities |
    /// | Prepare (destination) | Perform (source) | the Begin flags + graphics, capabilities, block-dirty-bitmaps | capabilities |
    /// | Perform (source) | Finish (destination) | network, statistics, nbd, persistent | statistics, persistent |
    /// | Finish (destination) | Confirm (source) | statistics | statistics |
    ///
    /// Keel has no lock manager, NBD storage migration, memory or vCPU hotplug, so a peer that
    /// marks one of those mandatory is refused before any state moves.
    public enum Phase: String, Sendable, Hashable, CaseIterable {
        case begin, prepare, perform, finish

        /// The mandatory features Keel can honour in a cookie of this phase.
        public var readable: Features {
            switch self {
            case .begin: [.cpu, .capabilities]
            case .prepare: [.capabilities]
            case .perform: [.statistics, .persistent]
            case .finish: [.statistics]
            }
        }
    }

    /// The domain's name (libvirt's `origname` when renamed).
    public var name: String
    public var uuid: String
    /// The writer's host name.
    public var hostname: String
    /// The writer's host UUID; a reader refuses its own.
    public var hostUUID: String
    /// The data a reader must understand (`<feature name=…/>`).
    public var mandatory: Features
    /// The persistent definition (`<domain>`), sent with `persistent` mandatory.
    public var persistent: DomainDefinition?
    public var statistics: MigrationStatistics?
    /// The updated guest CPU (`check='full'`): what the guest really has. Optional data.
    public var cpu: CPUDefinition?
    /// nil: no `<capabilities>` element; empty: an empty one.
    public var capabilities: [Capability]?
    /// libvirt elements Keel keeps but does not interpret (graphics, lockstate, network, nbd,
    /// allowReboot, blockDirtyBitmaps), in document order; each is written back in its slot.
    public var uninterpreted: [XMLElement]
    /// Elements no libvirt writes (optional data of a newer writer), kept and written back
    /// after libvirt's elements.
    public var unknownElements: [XMLElement]
    public var abiRecord: ABIRecord?

    public init(name: String, uuid: String, hostname: String, hostUUID: String) {
        self.name = name
        self.uuid = uuid
        self.hostname = hostname
        self.hostUUID = hostUUID
        mandatory = []
        uninterpreted = []
        unknownElements = []
    }

    /// The element names libvirt writes after the mandatory features, in its order (releases
    /// before 9.0 also wrote `allowReboot`). A name Keel interprets has a typed field; the others
    /// are kept in `uninterpreted`.
    static let libvirtSlots = [
        "graphics", "lockstate", "domain", "network", "nbd", "statistics", "cpu", "allowReboot",
        "capabilities", "blockDirtyBitmaps",
    ]
}
