import KeelXML

/// A guest or host `<cpu>` with libvirt 9.0's semantics.
///
/// Guest CPUs come from domain XML; host CPUs (with `<arch>`) from capabilities XML. Fields keep
/// libvirt's defaults so that formatting reproduces libvirt's output byte for byte.
public struct CPUDefinition: Sendable, Hashable {
    /// Host or guest CPU (libvirt's virCPUType).
    public enum Kind: String, Sendable, Hashable {
        case host
        case guest
    }

    /// `<cpu mode>` (libvirt's virCPUMode, in enum order).
    public enum Mode: String, Sendable, Hashable, CaseIterable {
        case custom
        case hostModel = "host-model"
        case hostPassthrough = "host-passthrough"
        case maximum
    }

    /// `<cpu match>`; libvirt's default (0) is exact.
    public enum Match: String, Sendable, Hashable, CaseIterable {
        case exact
        case minimum
        case strict
    }

    /// `<cpu check>`; `.default` is never formatted.
    public enum Check: String, Sendable, Hashable, CaseIterable {
        case `default`
        case none
        case partial
        case full
    }

    /// `<model fallback>`; libvirt's default is allow.
    public enum Fallback: String, Sendable, Hashable, CaseIterable {
        case allow
        case forbid
    }

    /// `<feature policy>` of a guest CPU, in libvirt's enum order.
    public enum Policy: String, Sendable, Hashable, CaseIterable {
        case force
        case require
        case optional
        case disable
        case forbid
    }

    /// One `<feature>`: host CPU features have no policy.
    public struct Feature: Sendable, Hashable {
        public var name: String
        public var policy: Policy?

        public init(_ name: String, _ policy: Policy?) {
            self.name = name
            self.policy = policy
        }

        /// The policy libvirt's algorithms see: a host feature counts as required.
        public var effectivePolicy: Policy { policy ?? .require }
    }

    public struct Topology: Sendable, Hashable {
        public var sockets: UInt32
        public var dies: UInt32
        public var cores: UInt32
        public var threads: UInt32

        public init(sockets: UInt32, dies: UInt32 = 1, cores: UInt32, threads: UInt32) {
            self.sockets = sockets
            self.dies = dies
            self.cores = cores
            self.threads = threads
        }
    }

    public struct Cache: Sendable, Hashable {
        public enum Mode: String, Sendable, Hashable, CaseIterable {
            case emulate, passthrough, disable
        }
        public var level: Int?
        public var mode: Mode
    }

    public struct MaxPhysAddr: Sendable, Hashable {
        public enum Mode: String, Sendable, Hashable, CaseIterable {
            case emulate, passthrough
        }
        public var mode: Mode
        public var bits: Int?
    }

    /// The family/model/stepping of a host CPU (`<signature>`).
    public struct Signature: Sendable, Hashable {
        public var family: UInt32
        public var model: UInt32
        public var stepping: UInt32

        public init(family: UInt32, model: UInt32, stepping: UInt32) {
            self.family = family
            self.model = model
            self.stepping = stepping
        }
    }

    public struct TSCCounter: Sendable, Hashable {
        public var frequency: UInt64
        public var scaling: Bool?
    }

    public var type: Kind
    /// nil for host CPUs, which have no mode.
    public var mode: Mode?
    public var match: Match
    public var check: Check
    /// `migratable='on|off'`, only for host-passthrough and maximum.
    public var migratable: Bool?
    public var arch: String?
    public var model: String?
    public var fallback: Fallback
    public var vendorID: String?
    public var vendor: String?
    public var microcodeVersion: UInt32?
    public var signature: Signature?
    public var tsc: TSCCounter?
    public var topology: Topology?
    public var cache: Cache?
    public var maxPhysAddr: MaxPhysAddr?
    public var features: [Feature]
    /// `<numa>`, kept as written: Keel does not interpret it.
    public var numa: XMLElement?

    public init(
        type: Kind = .guest,
        mode: Mode? = .custom,
        match: Match = .exact,
        check: Check = .default,
        model: String? = nil,
        fallback: Fallback = .allow,
        vendor: String? = nil,
        features: [Feature] = []
    ) {
        self.type = type
        self.mode = type == .host ? nil : mode
        self.match = match
        self.check = check
        self.migratable = nil
        self.arch = nil
        self.model = model
        self.fallback = fallback
        self.vendorID = nil
        self.vendor = vendor
        self.microcodeVersion = nil
        self.signature = nil
        self.tsc = nil
        self.topology = nil
        self.cache = nil
        self.maxPhysAddr = nil
        self.features = features
        self.numa = nil
    }

    /// Whether the CPU is passthrough-like (host-passthrough or maximum).
    public var isPassthrough: Bool {
        mode == .hostPassthrough || mode == .maximum
    }

    /// The index of the feature called `name`.
    public func featureIndex(_ name: String) -> Int? {
        features.firstIndex { $0.name == name }
    }

    /// The policy of feature `name`, or nil when the CPU does not mention it.
    public func policy(of name: String) -> Policy? {
        featureIndex(name).map { features[$0].effectivePolicy }
    }

    /// Sets the policy of `name` in place, or appends it (libvirt's virCPUDefUpdateFeature).
    public mutating func updateFeature(_ name: String, _ policy: Policy) {
        let stored: Policy? = type == .host ? nil : policy
        if let index = featureIndex(name) {
            features[index].policy = stored
        } else {
            features.append(Feature(name, stored))
        }
    }

    /// Appends `name` unless the CPU already mentions it (libvirt's virCPUDefAddFeatureIfMissing).
    public mutating func addFeatureIfMissing(_ name: String, _ policy: Policy) {
        if featureIndex(name) == nil {
            features.append(Feature(name, type == .host ? nil : policy))
        }
    }
}
