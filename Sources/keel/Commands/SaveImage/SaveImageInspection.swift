import KeelCPU
import KeelDomain
import KeelSaveImage

/// Everything `keel save-image info` shows about one image.
struct SaveImageInspection {
    /// The image's path as given.
    var path: String
    /// Header, XML, cookie and sizes, read without touching the stream.
    var image: KeelSaveImage.SaveImageInfo
    /// The stored domain definition; `nil` when the XML does not parse (see `warnings`).
    var domain: DomainDefinition?
    /// The parsed cookie; `nil` when the image has none or it does not parse.
    var cookie: SaveCookie?
    /// How the cookie's (updated) CPU differs from the domain XML's (original) CPU; `nil` unless
    /// both exist and the CPU map knows their models and features.
    var difference: CPUDifference?
    /// What could not be read or computed, one sentence each. They do not fail the command:
    /// `info` shows what it can.
    var warnings: [String]

    /// The CPU in the domain XML: the one the user asked for (libvirt's origCPU).
    var originalCPU: CPUDefinition? { domain?.cpu }
    /// The CPU in the cookie: the one the guest really got.
    var updatedCPU: CPUDefinition? { cookie?.cpu }
}

/// How an updated CPU differs from the original one, feature by feature.
///
/// `added` and `removed` compare the two CPUs' expanded feature sets (the model's features plus
/// force/require, minus disable/forbid, as libvirt's x86ModelFromCPU builds them), so a feature
/// only listed explicitly because QEMU reported it, but already part of the model, is not a change.
struct CPUDifference: Equatable {
    /// An attribute of the `<cpu>` element or its `<model>`/`<vendor>` that changed.
    struct FieldChange: Equatable {
        var field: String
        var original: String?
        var updated: String?
    }

    /// A feature present in one expanded set only, with where it lives.
    struct FeatureChange: Equatable {
        var name: String
        var locations: [CPUFeatureLocation]
    }

    /// A feature whose policy changed without it entering or leaving the expanded set
    /// (`optional` → `require` on a model feature, `disable` → `forbid`, …).
    struct PolicyChange: Equatable {
        var name: String
        var original: String?
        var updated: String?
    }

    var fields: [FieldChange] = []
    /// In the updated CPU only.
    var added: [FeatureChange] = []
    /// In the original CPU only.
    var removed: [FeatureChange] = []
    var policies: [PolicyChange] = []

    var isEmpty: Bool { fields.isEmpty && added.isEmpty && removed.isEmpty && policies.isEmpty }
}

extension CPUDifference {
    /// Compares `original` with `updated` using `map`.
    /// - Throws: `CPUError` when the map does not know a model or feature of either CPU.
    init(original: CPUDefinition, updated: CPUDefinition, map: CPUMap) throws {
        let fieldPairs: [(String, String?, String?)] = [
            ("mode", original.mode?.rawValue, updated.mode?.rawValue),
            ("match", original.match.rawValue, updated.match.rawValue),
            ("check", original.check.rawValue, updated.check.rawValue),
            ("model", original.model, updated.model),
            ("fallback", original.fallback.rawValue, updated.fallback.rawValue),
            ("vendor", original.vendor, updated.vendor),
        ]
        fields = fieldPairs.compactMap { $0.1 == $0.2 ? nil : FieldChange(field: $0.0, original: $0.1, updated: $0.2) }

        let originalBits = try map.bits(of: original, .all)
        let updatedBits = try map.bits(of: updated, .all)
        added = map.features(in: updatedBits.subtracting(originalBits)).map { FeatureChange(name: $0.name, locations: $0.locations) }
        removed = map.features(in: originalBits.subtracting(updatedBits)).map { FeatureChange(name: $0.name, locations: $0.locations) }

        let moved = Set(added.map(\.name)).union(removed.map(\.name))
        let originalModel = try Self.modelBits(original, map)
        let updatedModel = try Self.modelBits(updated, map)
        var seen = Set<String>()
        for name in (original.features + updated.features).map(\.name) where seen.insert(name).inserted && !moved.contains(name) {
            let before = try Self.policy(of: name, in: original, modelBits: originalModel, map)
            let after = try Self.policy(of: name, in: updated, modelBits: updatedModel, map)
            if before != after {
                policies.append(PolicyChange(name: name, original: before, updated: after))
            }
        }
    }

    private static func modelBits(_ cpu: CPUDefinition, _ map: CPUMap) throws -> FeatureBits {
        guard let name = cpu.model else { return map.emptyBits() }
        guard let model = map.model(named: name) else {
            throw CPUError(.notFound, "Unknown CPU model \(name)")
        }
        return model.bits
    }

    /// The policy a CPU gives a feature: its explicit policy, else `require` when its model
    /// provides it (the two mean the same), else `nil`.
    private static func policy(of name: String, in cpu: CPUDefinition, modelBits: FeatureBits, _ map: CPUMap) throws -> String? {
        if let policy = cpu.policy(of: name) {
            return policy.rawValue
        }
        return try map.contains(name, in: modelBits) ? CPUDefinition.Policy.require.rawValue : nil
    }
}

// MARK: - Rendering

extension SaveImageInspection {
    /// The human-readable report.
    var text: String {
        let header = image.header
        var lines: [String] = []
        func row(_ label: String, _ value: String) {
            lines.append((label + ":").padding(to: 16) + value)
        }
        row("File", path)
        row("Complete", image.isComplete
            ? "yes"
            : "NO (magic LibvirtQemudPart: the writer did not finish; this image cannot be restored)")
        row("Version", String(header.version))
        row("Data length", String(header.dataLength))
        row("Was running", header.wasRunning ? "yes (restore resumes the guest)" : "no (restore leaves the guest paused)")
        row("Compression", "\(Self.compressionName(header)) (\(header.compressionValue))")
        row("Cookie offset", header.effectiveCookieOffset == 0 ? "0 (no cookie)" : String(header.effectiveCookieOffset))
        row("Stream offset", String(image.streamOffset))
        row("Stream length", "\(image.streamLength) bytes stored")
        row("Byte order", Self.byteOrderName(header.byteOrder))
        row("Domain", domain?.name ?? "unknown")
        row("UUID", domain?.uuid ?? "none")
        lines.append("")
        lines.append("Original CPU (domain XML):")
        lines.append(Self.indented(originalCPU?.formatted(), absent: "none"))
        lines.append("Updated CPU (save cookie):")
        lines.append(Self.indented(updatedCPU?.formatted(), absent: cookie == nil ? "none (no cookie)" : "none (QEMU did not change the CPU)"))
        lines.append("CPU difference (updated vs original):")
        lines.append(contentsOf: differenceLines)
        lines.append("")
        lines.append(contentsOf: abiRecordLines)
        if !warnings.isEmpty {
            lines.append("")
            lines.append(contentsOf: warnings.map { "warning: " + $0 })
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private var differenceLines: [String] {
        guard let difference else {
            return ["  " + (originalCPU == nil || updatedCPU == nil ? "none: only one CPU is stored" : "not available (see the warning below)")]
        }
        if difference.isEmpty {
            return ["  none"]
        }
        var lines: [String] = []
        for field in difference.fields {
            lines.append("  \(field.field): \(field.original ?? "none") -> \(field.updated ?? "none")")
        }
        let width = (difference.added + difference.removed).map(\.name.count).max() ?? 0
        for (sign, features) in [("+", difference.added), ("-", difference.removed)] {
            for feature in features {
                let bits = feature.locations.map(\.description).joined(separator: ", ")
                lines.append("  \(sign) \(feature.name.padding(to: width))  \(bits)")
            }
        }
        for policy in difference.policies {
            lines.append("  ~ \(policy.name): policy \(policy.original ?? "none") -> \(policy.updated ?? "none")")
        }
        return lines
    }

    private var abiRecordLines: [String] {
        guard let record = cookie?.abiRecord else {
            return ["ABI record: none (the image was not written by Keel)"]
        }
        var lines = ["ABI record (Keel):"]
        func row(_ label: String, _ value: String) {
            lines.append("  " + (label + ":").padding(to: 16) + value)
        }
        row("Requested CPU", record.requestedCPU.map(Self.summary) ?? "none")
        row("Effective CPU", record.effectiveCPU.map(Self.summary) ?? "none")
        var qemu = record.qemuVersion ?? "unknown"
        let details = [record.accelerator, record.machine.map { "machine " + $0 }].compactMap { $0 }
        if !details.isEmpty { qemu += " (" + details.joined(separator: ", ") + ")" }
        row("QEMU", qemu)
        row("Keel", record.managerVersion ?? "unknown")
        let host = [
            record.host.signature.map { "signature " + $0 },
            record.host.microcode.map { "microcode " + $0 },
            record.host.kernel.map { "kernel " + $0 },
        ].compactMap { $0 }
        row("Host", host.isEmpty ? "unknown" : host.joined(separator: ", "))
        row("CPUID words", String(record.cpuidWords.count))
        return lines
    }

    /// The machine-readable report; CPUs are XML strings, absent values `null`.
    var json: JSON {
        let header = image.header
        var members: [(String, JSON)] = [
            ("path", .string(path)),
            ("complete", .bool(image.isComplete)),
            ("version", .int(Int(header.version))),
            ("dataLength", .int(Int(header.dataLength))),
            ("wasRunning", .bool(header.wasRunning)),
            ("compression", .object([
                ("name", header.streamCompression.map { .string($0.name) } ?? .null),
                ("value", .int(Int(header.compressionValue))),
            ])),
            ("cookieOffset", .int(Int(header.effectiveCookieOffset))),
            ("streamOffset", .int(Int(image.streamOffset))),
            ("streamLength", .int(Int(image.streamLength))),
            ("fileSize", .int(Int(image.fileSize))),
            ("byteOrder", .string(Self.byteOrderName(header.byteOrder))),
        ]
        members.append(("domain", domain.map { .object([("name", .string($0.name)), ("uuid", $0.uuid.map(JSON.string) ?? .null)]) } ?? .null))
        members.append(("cpu", .object([
            ("original", originalCPU.map { .string($0.formatted()) } ?? .null),
            ("updated", updatedCPU.map { .string($0.formatted()) } ?? .null),
            ("difference", difference.map(Self.json) ?? .null),
        ])))
        members.append(("slirpHelper", cookie.map { .bool($0.slirpHelper) } ?? .null))
        members.append(("abiRecord", cookie?.abiRecord.map(Self.json) ?? .null))
        members.append(("warnings", .array(warnings.map(JSON.string))))
        return .object(members)
    }

    private static func json(_ difference: CPUDifference) -> JSON {
        func feature(_ change: CPUDifference.FeatureChange) -> JSON {
            .object([("name", .string(change.name)), ("bits", .array(change.locations.map { .string($0.description) }))])
        }
        func optional(_ value: String?) -> JSON { value.map(JSON.string) ?? .null }
        return .object([
            ("fields", .array(difference.fields.map {
                .object([("field", .string($0.field)), ("original", optional($0.original)), ("updated", optional($0.updated))])
            })),
            ("added", .array(difference.added.map(feature))),
            ("removed", .array(difference.removed.map(feature))),
            ("policyChanged", .array(difference.policies.map {
                .object([("name", .string($0.name)), ("original", optional($0.original)), ("updated", optional($0.updated))])
            })),
        ])
    }

    private static func json(_ record: ABIRecord) -> JSON {
        func optional(_ value: String?) -> JSON { value.map(JSON.string) ?? .null }
        return .object([
            ("requested", record.requestedCPU.map { .string($0.formatted()) } ?? .null),
            ("effective", record.effectiveCPU.map { .string($0.formatted()) } ?? .null),
            ("qemuVersion", optional(record.qemuVersion)),
            ("accelerator", optional(record.accelerator)),
            ("machine", optional(record.machine)),
            ("keelVersion", optional(record.managerVersion)),
            ("host", .object([
                ("signature", optional(record.host.signature)),
                ("microcode", optional(record.host.microcode)),
                ("kernel", optional(record.host.kernel)),
            ])),
            ("cpuidWords", .int(record.cpuidWords.count)),
        ])
    }

    static func compressionName(_ header: SaveImageHeader) -> String {
        header.streamCompression?.name ?? "unknown"
    }

    static func byteOrderName(_ order: SaveImageHeader.ByteOrder) -> String {
        order == .littleEndian ? "little-endian" : "big-endian"
    }

    /// One line for a CPU: `custom/exact/full qemu64 (AMD) +hypervisor -svm ?vmx`.
    static func summary(_ cpu: CPUDefinition) -> String {
        var parts = [[cpu.mode?.rawValue ?? "custom", cpu.match.rawValue, cpu.check.rawValue].joined(separator: "/")]
        if let model = cpu.model { parts.append(model) }
        if let vendor = cpu.vendor { parts.append("(\(vendor))") }
        for feature in cpu.features {
            switch feature.effectivePolicy {
            case .force, .require: parts.append("+" + feature.name)
            case .disable, .forbid: parts.append("-" + feature.name)
            case .optional: parts.append("?" + feature.name)
            }
        }
        return parts.joined(separator: " ")
    }

    private static func indented(_ text: String?, absent: String) -> String {
        guard let text else { return "  " + absent }
        return text.split(separator: "\n", omittingEmptySubsequences: true).map { "  " + $0 }.joined(separator: "\n")
    }
}

extension String {
    /// The string padded with spaces to at least `width` characters.
    func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
