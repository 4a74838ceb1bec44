import Glibc
import KeelXML

extension CPUMap {
    /// Loads an x86 CPU map in libvirt's `cpu_map` directory format.
    ///
    /// `index.xml` names the files; within the x86 arch, inline vendors, features and models load
    /// first, then each include in document order, and each file loads vendors, then features,
    /// then models — as libvirt's cpuMapLoad does, so a model may only use features defined
    /// before it.
    ///
    /// - Parameter directory: the directory holding `index.xml`.
    /// - Throws: `CPUError` with code `.invalidMap` naming the file and the problem.
    public static func load(directory: String) throws -> CPUMap {
        try load { name in
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            return try readMapFile(path)
        }
    }

    /// The map shipped inside Keel, generated from QEMU (see scripts/gen-cpu-map.py).
    public static let builtin: Result<CPUMap, CPUError> = {
        do {
            // The compact form of the same map loads in a fraction of the time; the XML is the
            // fallback (and the source of truth the compact form is checked against).
            if let compact = try? load(compactText: BuiltinCPUMapCompact.text) {
                return .success(compact)
            }
            return .success(try load { BuiltinCPUMap.files[$0] })
        } catch let error as CPUError {
            return .failure(error)
        } catch {
            return .failure(CPUError(.invalidMap, "cannot load the built-in CPU map: \(error)"))
        }
    }()

    /// Loads the built-in map afresh (the cached `builtin` is loaded once per process); for
    /// benchmarks of start-up cost.
    public static func loadBuiltinForBenchmark() throws -> CPUMap {
        try load(compactText: BuiltinCPUMapCompact.text)
    }

    /// Loads the built-in map from its embedded XML files (libvirt's format), not the compact form.
    public static func loadBuiltinXML() throws -> CPUMap {
        try load { BuiltinCPUMap.files[$0] }
    }

    /// The compact form committed for the built-in map.
    public static var builtinCompactText: String { BuiltinCPUMapCompact.text }

    /// The QEMU version the built-in map was generated from.
    public static var builtinQEMUVersion: String { BuiltinCPUMap.qemuVersion }

    /// The map to use: `directory` when given, else `$KEEL_CPU_MAP`, else the built-in map.
    public static func resolve(directory: String?) throws -> CPUMap {
        if let directory, !directory.isEmpty {
            return try load(directory: directory)
        }
        if let env = getenv("KEEL_CPU_MAP"), let value = String(validatingCString: env), !value.isEmpty {
            return try load(directory: value)
        }
        return try builtin.get()
    }

    /// Loads a map whose files come from `read` (nil = no such file).
    static func load(_ read: (String) throws -> String?) throws -> CPUMap {
        var loader = Loader()
        let index = try loader.parse("index.xml", read)
        guard let arch = index.children(named: "arch").first(where: { $0.attribute("name") == "x86" }) else {
            throw CPUError(.invalidMap, "CPU map index.xml has no x86 architecture")
        }
        try loader.loadDefinitions(arch, file: "index.xml")
        for include in arch.children(named: "include") {
            guard let filename = include.attribute("filename") else {
                throw CPUError(.invalidMap, "Missing 'filename' in CPU map include")
            }
            let root = try loader.parse(filename, read)
            try loader.loadDefinitions(root, file: filename)
        }
        return try loader.build()
    }

    /// Gives every distinct single bit of the features' locations a position, in feature order,
    /// and returns each feature's bits.
    static func assignBits(_ featureLocations: [[CPUFeatureLocation]]) -> (bitLocations: [CPUFeatureLocation], featureBits: [FeatureBits], wordCount: Int) {
        var bitPositions: [CPUFeatureLocation: Int] = [:]
        var bitLocations: [CPUFeatureLocation] = []
        var lists: [[Int]] = []
        for locations in featureLocations {
            var positions: [Int] = []
            for location in locations {
                for bit in location.bits {
                    let single: CPUFeatureLocation
                    switch location {
                    case .cpuid(let leaf, let subleaf, let register, _):
                        single = .cpuid(leaf: leaf, subleaf: subleaf, register: register, mask: 1 << UInt32(bit))
                    case .msr(let index, let register, _):
                        single = .msr(index: index, register: register, mask: 1 << UInt32(bit))
                    }
                    if let position = bitPositions[single] {
                        positions.append(position)
                    } else {
                        bitPositions[single] = bitLocations.count
                        positions.append(bitLocations.count)
                        bitLocations.append(single)
                    }
                }
            }
            lists.append(positions)
        }
        let wordCount = max(1, (bitLocations.count + 63) / 64)
        let featureBits = lists.map { positions -> FeatureBits in
            var bits = FeatureBits(wordCount: wordCount)
            for position in positions { bits.insert(bit: position) }
            return bits
        }
        return (bitLocations, featureBits, wordCount)
    }

    static func readMapFile(_ path: String) throws -> String? {
        guard let file = fopen(path, "rb") else {
            if errno == ENOENT { return nil }
            throw CPUError(.invalidMap, "cannot read CPU map file \(path): \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count > 0 { bytes.append(contentsOf: buffer[0..<count]) }
            if count < buffer.count { break }
            if bytes.count > 16 << 20 {
                throw CPUError(.invalidMap, "CPU map file \(path) is too large")
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Collects a map's definitions in load order, then assigns bit positions and builds it.
private struct Loader {
    struct RawFeature {
        var name: String
        var locations: [CPUFeatureLocation]
        var migratable: Bool
        var aliases: [String]
    }

    var vendors: [CPUMap.Vendor] = []
    var features: [RawFeature] = []
    var featureNames: [String: Int] = [:]
    var models: [(element: XMLElement, file: String)] = []

    func parse(_ name: String, _ read: (String) throws -> String?) throws -> XMLElement {
        guard let text = try read(name) else {
            throw CPUError(.invalidMap, "CPU map file \(name) not found")
        }
        do {
            return try XMLParser.parse(text)
        } catch {
            throw CPUError(.invalidMap, "CPU map file \(name): \(error)")
        }
    }

    mutating func loadDefinitions(_ root: XMLElement, file: String) throws {
        for element in root.children(named: "vendor") {
            guard let name = element.attribute("name") else {
                throw CPUError(.invalidMap, "cannot find vendor name in CPU map '\(file)'")
            }
            if vendors.contains(where: { $0.name == name }) {
                throw CPUError(.invalidMap, "CPU vendor \(name) already defined")
            }
            guard let string = element.attribute("string"), string.utf8.count == 12 else {
                throw CPUError(.invalidMap, "Invalid CPU vendor string '\(element.attribute("string") ?? "")'")
            }
            vendors.append(CPUMap.Vendor(name: name, string: string))
        }
        for element in root.children(named: "feature") {
            guard let name = element.attribute("name") else {
                throw CPUError(.invalidMap, "cannot find feature name in CPU map '\(file)'")
            }
            if featureNames[name] != nil {
                throw CPUError(.invalidMap, "CPU feature \(name) already defined")
            }
            var locations: [CPUFeatureLocation] = []
            var cpuidCount = 0
            var msrCount = 0
            var aliases: [String] = []
            for child in element.elements {
                switch child.name {
                case "cpuid":
                    let position = cpuidCount
                    cpuidCount += 1
                    func value(_ attribute: String, required: Bool = false) throws -> UInt32 {
                        guard let text = child.attribute(attribute) else {
                            if required { throw CPUError(.invalidMap, "Invalid cpuid[\(position)] in \(name) feature") }
                            return 0
                        }
                        guard let parsed = parseMapInteger(text) else {
                            throw CPUError(.invalidMap, "Invalid cpuid[\(position)] in \(name) feature")
                        }
                        return parsed
                    }
                    let leaf = try value("eax_in", required: true)
                    let subleaf = try value("ecx_in")
                    for register in CPUFeatureLocation.Register.allCases {
                        let mask = try value(register.rawValue)
                        if mask != 0 {
                            locations.append(.cpuid(leaf: leaf, subleaf: subleaf, register: register, mask: mask))
                        }
                    }
                case "msr":
                    let position = msrCount
                    msrCount += 1
                    guard let indexText = child.attribute("index"), let index = parseMapInteger(indexText),
                          let eaxText = child.attribute("eax"), let eax = parseMapInteger(eaxText),
                          let edxText = child.attribute("edx"), let edx = parseMapInteger(edxText)
                    else {
                        throw CPUError(.invalidMap, "Invalid msr[\(position)] in \(name) feature")
                    }
                    if eax != 0 { locations.append(.msr(index: index, register: .eax, mask: eax)) }
                    if edx != 0 { locations.append(.msr(index: index, register: .edx, mask: edx)) }
                case "alias":
                    if child.attribute("source") == "qemu", let alias = child.attribute("name") {
                        aliases.append(alias)
                    }
                default:
                    break
                }
            }
            if cpuidCount + msrCount == 0 {
                throw CPUError(.invalidMap, "no x86 CPU data found in feature \(name)")
            }
            featureNames[name] = features.count
            features.append(RawFeature(
                name: name, locations: locations,
                migratable: element.attribute("migratable") != "no", aliases: aliases
            ))
        }
        for element in root.children(named: "model") {
            guard let name = element.attribute("name") else {
                throw CPUError(.invalidMap, "cannot find model name in CPU map '\(file)'")
            }
            // A model may only use features loaded before it, as in libvirt.
            for feature in element.children(named: "feature") {
                guard let featureName = feature.attribute("name") else {
                    throw CPUError(.invalidMap, "Missing feature name for CPU model \(name)")
                }
                if featureNames[featureName] == nil {
                    throw CPUError(.invalidMap, "Feature \(featureName) required by CPU model \(name) not found")
                }
            }
            models.append((element, file))
        }
    }

    func build() throws -> CPUMap {
        let assigned = CPUMap.assignBits(features.map(\.locations))
        let wordCount = assigned.wordCount
        let featureBits = assigned.featureBits
        var builtFeatures: [CPUMap.Feature] = []
        for (index, feature) in features.enumerated() {
            builtFeatures.append(CPUMap.Feature(
                name: feature.name, index: index, locations: feature.locations,
                migratable: feature.migratable, qemuAliases: feature.aliases, bits: SparseBits(featureBits[index])
            ))
        }
        var builtModels: [CPUMap.Model] = []
        var modelIndex: [String: Int] = [:]
        for (element, _) in models {
            let name = element.attribute("name") ?? ""
            if modelIndex[name] != nil {
                throw CPUError(.invalidMap, "Multiple definitions of CPU model '\(name)'")
            }
            guard let decode = element.child("decode") else {
                throw CPUError(.invalidMap, "missing decode element in CPU model \(name)")
            }
            guard let decodeHost = switchValue(decode.attribute("host")),
                  let decodeGuest = switchValue(decode.attribute("guest"))
            else {
                throw CPUError(.invalidMap, "invalid decode element in CPU model \(name)")
            }
            var model = CPUMap.Model(
                name: name, index: builtModels.count, vendor: nil, signatures: [],
                decodeHost: decodeHost, decodeGuest: decodeGuest,
                bits: FeatureBits(wordCount: wordCount), removedFeatures: [],
                aliasOf: element.child("alias-of")?.attribute("name")
            )
            if let ancestor = element.child("model") {
                guard let ancestorName = ancestor.attribute("name") else {
                    throw CPUError(.invalidMap, "Missing ancestor's name in CPU model \(name)")
                }
                guard let parent = modelIndex[ancestorName].map({ builtModels[$0] }) else {
                    throw CPUError(.invalidMap, "Ancestor model \(ancestorName) not found for CPU model \(name)")
                }
                model.vendor = parent.vendor
                model.signatures = parent.signatures
                model.bits = parent.bits
            }
            let signatures = element.children(named: "signature")
            if !signatures.isEmpty {
                model.signatures = []
                for signature in signatures {
                    guard let familyText = signature.attribute("family"), let family = UInt32(familyText), family != 0 else {
                        throw CPUError(.invalidMap, "Invalid CPU signature family in model \(name)")
                    }
                    guard let modelText = signature.attribute("model"), let number = UInt32(modelText) else {
                        throw CPUError(.invalidMap, "Invalid CPU signature model in model \(name)")
                    }
                    var steppings: UInt16?
                    if let text = signature.attribute("stepping") {
                        guard let mask = parseBitmap(text) else {
                            throw CPUError(.invalidMap, "Invalid CPU signature stepping '\(text)' in model \(name)")
                        }
                        steppings = mask
                    }
                    model.signatures.append(CPUMap.Signature(family: family, model: number, steppings: steppings))
                }
            }
            if let vendor = element.child("vendor") {
                guard let vendorName = vendor.attribute("name") else {
                    throw CPUError(.invalidMap, "Invalid vendor element in CPU model \(name)")
                }
                guard vendors.contains(where: { $0.name == vendorName }) else {
                    throw CPUError(.invalidMap, "Unknown vendor \(vendorName) referenced by CPU model \(name)")
                }
                model.vendor = vendorName
            }
            for feature in element.children(named: "feature") {
                let featureName = feature.attribute("name") ?? ""
                guard let index = featureNames[featureName] else {
                    throw CPUError(.invalidMap, "Feature \(featureName) required by CPU model \(name) not found")
                }
                if let removed = feature.attribute("removed") {
                    guard removed == "yes" || removed == "no" else {
                        throw CPUError(.invalidMap, "Invalid value for attribute 'removed' in element 'feature': '\(removed)'.")
                    }
                    if removed == "yes" {
                        model.removedFeatures.append(featureName)
                        continue
                    }
                }
                model.bits.formUnion(featureBits[index])
            }
            modelIndex[name] = builtModels.count
            builtModels.append(model)
        }
        return CPUMap(vendors: vendors, features: builtFeatures, models: builtModels, wordCount: wordCount, bitLocations: assigned.bitLocations)
    }

    private func switchValue(_ value: String?) -> Bool? {
        switch value {
        case "on": return true
        case "off": return false
        default: return nil
        }
    }

    /// Parses libvirt's bitmap syntax for steppings: "3", "0-4", "5,7-9".
    private func parseBitmap(_ text: String) -> UInt16? {
        var mask: UInt16 = 0
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count),
                  let low = Int(bounds[0].trimmingSpaces), let high = Int(bounds[bounds.count - 1].trimmingSpaces),
                  low >= 0, high < 16, low <= high
            else { return nil }
            for bit in low...high { mask |= 1 << UInt16(bit) }
        }
        return mask
    }
}

/// Parses an unsigned integer with C's base auto-detection (0x hex, leading 0 octal).
func parseMapInteger(_ text: String) -> UInt32? {
    var text = Substring(text)
    while text.first == " " { text.removeFirst() }
    if text.hasPrefix("0x") || text.hasPrefix("0X") {
        return UInt32(text.dropFirst(2), radix: 16)
    }
    if text.count > 1 && text.hasPrefix("0") {
        return UInt32(text.dropFirst(), radix: 8)
    }
    return UInt32(text, radix: 10)
}

extension Substring {
    var trimmingSpaces: Substring {
        var value = self
        while value.first == " " { value.removeFirst() }
        while value.last == " " { value.removeLast() }
        return value
    }
}
