/// An x86 CPU map: vendors, features with their CPUID/MSR bits, and models, in libvirt's
/// `cpu_map` vocabulary and order.
///
/// Order matters: features are reported in map order, and decoding walks models in reverse (the
/// newest models are defined last).
public final class CPUMap: Sendable {
    public struct Vendor: Sendable, Hashable {
        public var name: String
        /// The 12-character CPUID leaf 0 string, e.g. GenuineIntel.
        public var string: String
    }

    public struct Feature: Sendable {
        public var name: String
        /// Position in map order.
        public var index: Int
        public var locations: [CPUFeatureLocation]
        public var migratable: Bool
        /// The names QEMU uses for this feature (`<alias source='qemu'>`), if different.
        public var qemuAliases: [String]
        public var bits: SparseBits
    }

    public struct Signature: Sendable, Hashable {
        public var family: UInt32
        public var model: UInt32
        /// Allowed steppings as a bit mask over 0–15; nil accepts any.
        public var steppings: UInt16?

        func matches(family: UInt32, model: UInt32, stepping: UInt32) -> Bool {
            guard self.family == family && self.model == model else { return false }
            guard let steppings else { return true }
            return stepping < 16 && steppings & (1 << UInt16(stepping)) != 0
        }
    }

    public struct Model: Sendable {
        public var name: String
        public var index: Int
        public var vendor: String?
        public var signatures: [Signature]
        public var decodeHost: Bool
        public var decodeGuest: Bool
        public var bits: FeatureBits
        /// Features removed from the model (`removed='yes'`): always listed as disabled.
        public var removedFeatures: [String]
        /// For QEMU's unversioned model names: the versioned model they resolve to.
        public var aliasOf: String?

        func signaturesMatch(_ signature: UInt32) -> Bool {
            let (family, model, stepping) = CPUMap.decodeSignature(signature)
            return signatures.contains { $0.matches(family: family, model: model, stepping: stepping) }
        }
    }

    public let vendors: [Vendor]
    public let features: [Feature]
    public let models: [Model]
    /// Number of 64-bit words of a `FeatureBits` of this map.
    public let wordCount: Int
    /// Every distinct bit of the map, by position.
    let bitLocations: [CPUFeatureLocation]
    /// Position of every single-bit location.
    let bitPosition: [CPUFeatureLocation: Int]
    let featureByName: [String: Int]
    let featureByQEMUName: [String: Int]
    let modelByName: [String: Int]
    let vendorByName: [String: Int]

    init(vendors: [Vendor], features: [Feature], models: [Model], wordCount: Int, bitLocations: [CPUFeatureLocation]) {
        self.vendors = vendors
        self.features = features
        self.models = models
        self.wordCount = wordCount
        self.bitLocations = bitLocations
        var positions: [CPUFeatureLocation: Int] = [:]
        for (position, location) in bitLocations.enumerated() {
            positions[location] = position
        }
        bitPosition = positions
        var byName: [String: Int] = [:]
        var byQEMU: [String: Int] = [:]
        for feature in features {
            byName[feature.name] = feature.index
            for alias in feature.qemuAliases {
                byQEMU[alias] = feature.index
            }
        }
        featureByName = byName
        featureByQEMUName = byQEMU
        var modelIndex: [String: Int] = [:]
        for model in models {
            modelIndex[model.name] = model.index
        }
        modelByName = modelIndex
        var vendorIndex: [String: Int] = [:]
        for (index, vendor) in vendors.enumerated() {
            vendorIndex[vendor.name] = index
        }
        vendorByName = vendorIndex
    }

    /// The feature called `name` (libvirt spelling).
    public func feature(named name: String) -> Feature? {
        featureByName[name].map { features[$0] }
    }

    /// The model called `name`.
    public func model(named name: String) -> Model? {
        modelByName[name].map { models[$0] }
    }

    /// The vendor called `name` (Intel, AMD, Hygon).
    public func vendor(named name: String) -> Vendor? {
        vendorByName[name].map { vendors[$0] }
    }

    /// An empty bit set sized for this map.
    public func emptyBits() -> FeatureBits {
        FeatureBits(wordCount: wordCount)
    }

    /// The names of the features wholly contained in `bits`, in map order (x86FeatureNames).
    public func featureNames(in bits: FeatureBits) -> [String] {
        features.compactMap { $0.bits.isSubset(of: bits) ? $0.name : nil }
    }

    /// The features wholly contained in `bits`, in map order.
    public func features(in bits: FeatureBits) -> [Feature] {
        features.filter { $0.bits.isSubset(of: bits) }
    }

    /// Describes each feature of `bits` as a problem of the given kind, with its bits.
    public func problems(_ kind: CPUFeatureProblem.Kind, in bits: FeatureBits) -> [CPUFeatureProblem] {
        features(in: bits).map { CPUFeatureProblem(name: $0.name, kind: kind, locations: $0.locations) }
    }

    /// Family, model and stepping from a CPUID leaf 1 EAX value.
    static func decodeSignature(_ eax: UInt32) -> (family: UInt32, model: UInt32, stepping: UInt32) {
        let family = ((eax >> 20) & 0xff) + ((eax >> 8) & 0xf)
        let model = ((eax >> 12) & 0xf0) + ((eax >> 4) & 0xf)
        return (family, model, eax & 0xf)
    }

    /// A CPUID leaf 1 EAX value from family, model and stepping (libvirt's x86MakeSignature).
    static func encodeSignature(family: UInt32, model: UInt32, stepping: UInt32) -> UInt32 {
        var family = family
        var signature: UInt32 = 0
        if family > 0xf {
            signature |= (family - 0xf) << 20
            family = 0xf
        }
        signature |= (model >> 4) << 16
        signature |= family << 8
        signature |= (model & 0xf) << 4
        signature |= stepping & 0xf
        return signature
    }
}
