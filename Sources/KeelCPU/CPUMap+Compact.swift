/// A compact text form of a loaded CPU map, so that the built-in map loads in well under a
/// millisecond instead of parsing 260 XML files on every start of every command.
///
/// The XML files under `Sources/KeelCPU/CPUMap/` stay the source of truth (libvirt's format,
/// regenerated from QEMU by `scripts/gen-cpu-map.py`); this form is derived from the loaded
/// map, committed as `BuiltinCPUMapCompact.generated.swift`, and a test fails when the two
/// disagree (`KEEL_RECORD=1` rewrites it).
///
/// ```
/// keel-cpu-map 1
/// vendor Intel GenuineIntel
/// feature NAME MIGRATABLE(0|1) ALIASES(a,b|-) LOCATION…    c:LEAF:SUBLEAF:REG:MASK | m:INDEX:REG:MASK (hex)
/// model NAME VENDOR|- HOST(0|1) GUEST(0|1) ALIAS-OF|- SIGNATURES|- REMOVED|- FEATURES
///       SIGNATURES = FAMILY:MODEL:STEPPINGMASK|* joined by ';'   FEATURES = feature indices joined by ','
/// ```
extension CPUMap {
    static let compactHeader = "keel-cpu-map 1"

    /// The map in the compact text form.
    public func compactText() -> String {
        var out = CPUMap.compactHeader + "\n"
        for vendor in vendors {
            out += "vendor \(vendor.name) \(vendor.string)\n"
        }
        for feature in features {
            out += "feature \(feature.name) \(feature.migratable ? 1 : 0) \(feature.qemuAliases.isEmpty ? "-" : feature.qemuAliases.joined(separator: ","))"
            for location in feature.locations {
                switch location {
                case .cpuid(let leaf, let subleaf, let register, let mask):
                    out += " c:\(String(leaf, radix: 16)):\(String(subleaf, radix: 16)):\(register.rawValue):\(String(mask, radix: 16))"
                case .msr(let index, let register, let mask):
                    out += " m:\(String(index, radix: 16)):\(register.rawValue):\(String(mask, radix: 16))"
                }
            }
            out += "\n"
        }
        for model in models {
            let signatures = model.signatures.isEmpty ? "-" : model.signatures.map {
                "\($0.family):\($0.model):\($0.steppings.map { String($0, radix: 16) } ?? "*")"
            }.joined(separator: ";")
            let contained = features.filter { $0.bits.isSubset(of: model.bits) }.map { String($0.index) }
            out += "model \(model.name) \(model.vendor ?? "-") \(model.decodeHost ? 1 : 0) \(model.decodeGuest ? 1 : 0) "
            out += "\(model.aliasOf ?? "-") \(signatures) \(model.removedFeatures.isEmpty ? "-" : model.removedFeatures.joined(separator: ",")) "
            out += contained.isEmpty ? "-" : contained.joined(separator: ",")
            out += "\n"
        }
        return out
    }

    /// Loads a map from its compact text form.
    ///
    /// - Throws: `CPUError` `.invalidMap` naming the line at fault.
    public static func load(compactText: String) throws -> CPUMap {
        var lines = compactText.split(separator: "\n", omittingEmptySubsequences: true)[...]
        guard lines.first == Substring(compactHeader) else {
            throw CPUError(.invalidMap, "not a compact CPU map (expected '\(compactHeader)')")
        }
        lines = lines.dropFirst()
        var vendors: [Vendor] = []
        var rawFeatures: [(name: String, migratable: Bool, aliases: [String], locations: [CPUFeatureLocation])] = []
        var rawModels: [[Substring]] = []
        for (number, line) in lines.enumerated() {
            let fields = line.split(separator: " ")
            func bad() -> CPUError { CPUError(.invalidMap, "compact CPU map line \(number + 2) is invalid: \(line)") }
            switch fields.first {
            case "vendor":
                guard fields.count == 3 else { throw bad() }
                vendors.append(Vendor(name: String(fields[1]), string: String(fields[2])))
            case "feature":
                guard fields.count >= 4 else { throw bad() }
                var locations: [CPUFeatureLocation] = []
                for field in fields.dropFirst(4) {
                    let parts = field.split(separator: ":")
                    if parts.count == 5, parts[0] == "c", let leaf = UInt32(parts[1], radix: 16), let subleaf = UInt32(parts[2], radix: 16),
                       let register = CPUFeatureLocation.Register(rawValue: String(parts[3])), let mask = UInt32(parts[4], radix: 16) {
                        locations.append(.cpuid(leaf: leaf, subleaf: subleaf, register: register, mask: mask))
                    } else if parts.count == 4, parts[0] == "m", let index = UInt32(parts[1], radix: 16),
                              let register = CPUFeatureLocation.Register(rawValue: String(parts[2])), let mask = UInt32(parts[3], radix: 16) {
                        locations.append(.msr(index: index, register: register, mask: mask))
                    } else {
                        throw bad()
                    }
                }
                let aliases = fields[3] == "-" ? [] : fields[3].split(separator: ",").map(String.init)
                rawFeatures.append((String(fields[1]), fields[2] == "1", aliases, locations))
            case "model":
                guard fields.count == 9 else { throw bad() }
                rawModels.append(fields)
            default:
                throw bad()
            }
        }
        let assigned = assignBits(rawFeatures.map(\.locations))
        let features = rawFeatures.enumerated().map { index, raw in
            Feature(name: raw.name, index: index, locations: raw.locations, migratable: raw.migratable,
                    qemuAliases: raw.aliases, bits: SparseBits(assigned.featureBits[index]))
        }
        var models: [Model] = []
        for fields in rawModels {
            func bad() -> CPUError { CPUError(.invalidMap, "compact CPU map model \(fields[1]) is invalid") }
            var signatures: [Signature] = []
            if fields[6] != "-" {
                for text in fields[6].split(separator: ";") {
                    let parts = text.split(separator: ":")
                    guard parts.count == 3, let family = UInt32(parts[0]), let model = UInt32(parts[1]) else { throw bad() }
                    let steppings: UInt16?
                    if parts[2] == "*" {
                        steppings = nil
                    } else if let mask = UInt16(parts[2], radix: 16) {
                        steppings = mask
                    } else {
                        throw bad()
                    }
                    signatures.append(Signature(family: family, model: model, steppings: steppings))
                }
            }
            var bits = FeatureBits(wordCount: assigned.wordCount)
            if fields[8] != "-" {
                for text in fields[8].split(separator: ",") {
                    guard let index = Int(text), assigned.featureBits.indices.contains(index) else { throw bad() }
                    bits.formUnion(assigned.featureBits[index])
                }
            }
            models.append(Model(
                name: String(fields[1]), index: models.count, vendor: fields[2] == "-" ? nil : String(fields[2]),
                signatures: signatures, decodeHost: fields[3] == "1", decodeGuest: fields[4] == "1", bits: bits,
                removedFeatures: fields[7] == "-" ? [] : fields[7].split(separator: ",").map(String.init),
                aliasOf: fields[5] == "-" ? nil : String(fields[5])
            ))
        }
        return CPUMap(vendors: vendors, features: features, models: models, wordCount: assigned.wordCount, bitLocations: assigned.bitLocations)
    }

    /// Whether two maps describe the same vendors, features and models, in the same order.
    public func isEquivalent(to other: CPUMap) -> Bool {
        guard vendors == other.vendors, features.count == other.features.count, models.count == other.models.count else { return false }
        for (a, b) in zip(features, other.features) where a.name != b.name || a.locations != b.locations || a.migratable != b.migratable || a.qemuAliases != b.qemuAliases {
            return false
        }
        for (a, b) in zip(models, other.models) {
            if a.name != b.name || a.vendor != b.vendor || a.signatures != b.signatures || a.decodeHost != b.decodeHost
                || a.decodeGuest != b.decodeGuest || a.bits != b.bits || a.removedFeatures != b.removedFeatures || a.aliasOf != b.aliasOf {
                return false
            }
        }
        return true
    }
}
