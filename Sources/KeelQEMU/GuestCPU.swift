import KeelCPU
import KeelDomain

/// How Keel turns a guest CPU into QEMU's `-cpu` argument, and decides before QEMU starts
/// whether a host can reproduce a CPU exactly.
public enum GuestCPU {
    /// The `-cpu` argument libvirt would build (qemuBuildCpuModelArgStr): the model, the
    /// vendor_id, and each explicit feature on (force, require) or off (disable, forbid).
    /// nil when QEMU's default CPU is to be used.
    public static func commandLine(for cpu: CPUDefinition?, map: CPUMap) -> String? {
        guard let cpu else { return nil }
        switch cpu.mode ?? .custom {
        case .hostPassthrough:
            if let migratable = cpu.migratable {
                return "host,migratable=" + (migratable ? "on" : "off") + features(cpu, map)
            }
            return "host" + features(cpu, map)
        case .maximum:
            if let migratable = cpu.migratable {
                return "max,migratable=" + (migratable ? "on" : "off") + features(cpu, map)
            }
            return "max" + features(cpu, map)
        case .custom, .hostModel:
            guard let model = cpu.model else { return nil }
            var argument = model
            if let vendorID = cpu.vendorID { argument += ",vendor=" + vendorID }
            return argument + features(cpu, map)
        }
    }

    private static func features(_ cpu: CPUDefinition, _ map: CPUMap) -> String {
        var text = ""
        for feature in cpu.features {
            let name = map.qemuFeatureName(for: feature.name)
            switch feature.effectivePolicy {
            case .force, .require: text += ",\(name)=on"
            case .disable, .forbid: text += ",\(name)=off"
            case .optional: break
            }
        }
        return text
    }

    /// The features a custom CPU has, as bits: its model's plus require/force minus
    /// disable/forbid.
    public static func bits(of cpu: CPUDefinition, map: CPUMap) throws -> FeatureBits {
        try map.bits(of: cpu, .all)
    }

    /// The `-cpu` argument that pins every CPUID feature of the map explicitly on or off, so
    /// that QEMU can neither add nor drop anything (restore, incoming migration).
    ///
    /// - Parameter knownFeatures: the features this QEMU knows (libvirt names); others are
    ///   left out of the argument.
    /// - Throws: `CPUError` for an unknown model or feature.
    public static func pinnedCommandLine(for cpu: CPUDefinition, map: CPUMap, knownFeatures: Set<String>? = nil) throws -> String {
        guard let model = cpu.model, cpu.mode == .custom || cpu.mode == nil else {
            throw QEMUError(.unsupported, "only custom CPUs can be pinned; resolve host-model first")
        }
        let bits = try map.bits(of: cpu, .all)
        var argument = model
        if let vendorID = cpu.vendorID { argument += ",vendor=" + vendorID }
        // Features of another map (libvirt's) that QEMU has no property for (osxsave, ospke,
        // cmt, …) cannot be set on -cpu: only names the built-in map (QEMU's own) knows are pinned.
        let known = knownFeatures ?? (try? CPUMap.builtin.get()).map { Set($0.features.map(\.name)) }
        for feature in map.features where isCPUID(feature) {
            if let known, !known.contains(feature.name) { continue }
            let on = feature.bits.isSubset(of: bits)
            argument += ",\(map.qemuFeatureName(for: feature.name))=\(on ? "on" : "off")"
        }
        return argument
    }

    static func isCPUID(_ feature: CPUMap.Feature) -> Bool {
        feature.locations.allSatisfy {
            if case .cpuid = $0 { return true }
            return false
        }
    }
}

extension CPUVerdict {
    /// Decides whether `cpu` can be reproduced exactly on this host.
    ///
    /// - Parameters:
    ///   - cpu: the CPU the guest had (the cookie CPU, or the XML CPU without a cookie).
    ///   - capabilities: this host's QEMU under the accelerator the guest needs.
    ///   - ceiling: the administrator's ceiling for this host, if any.
    ///   - map: the CPU map.
    public static func decide(for cpu: CPUDefinition, capabilities: QEMUCapabilities, ceiling: CPUDefinition?, map: CPUMap) throws -> CPUVerdict {
        var verdict = CPUVerdict()
        if let model = cpu.model, cpu.mode == .custom, capabilities.cpuModel(named: model) == nil {
            verdict.reasons.append("CPU model \(model) is not supported by QEMU \(capabilities.version) (\(capabilities.accelerator.rawValue))")
        }
        let required: FeatureBits
        switch cpu.mode ?? .custom {
        case .custom:
            guard cpu.model != nil else { return verdict }
            required = try map.bits(of: cpu, .all)
        case .hostModel, .hostPassthrough, .maximum:
            // The guest took whatever the saving host had; without a cookie CPU there is no
            // exact definition to check against.
            verdict.reasons.append("a \(cpu.mode?.rawValue ?? "") CPU cannot be checked before start; save it with an updated (custom) CPU")
            return verdict
        }
        let available = map.bits(ofFeatures: capabilities.availableFeatures)
        let forced = map.bits(ofFeatures: capabilities.forcedFeatures)
        for feature in map.features(in: required.subtracting(available)) {
            verdict.missing.append(Problem(
                feature: CPUFeatureProblem(name: feature.name, kind: .missing, locations: feature.locations),
                reason: "QEMU \(capabilities.version) cannot provide it under \(capabilities.accelerator.rawValue)"
            ))
        }
        if let ceiling {
            // A ceiling caps what the host CPU offers; the hypervisor's own leaves are not its.
            let allowed = try map.bits(of: ceiling, .all).union(map.hypervisorLeafBits)
            for feature in map.features(in: required.subtracting(allowed)) where !verdict.missing.contains(where: { $0.feature.name == feature.name }) {
                verdict.missing.append(Problem(
                    feature: CPUFeatureProblem(name: feature.name, kind: .missing, locations: feature.locations),
                    reason: "beyond this host's CPU ceiling"
                ))
            }
        }
        for feature in map.features(in: forced.subtracting(required)) {
            verdict.extra.append(Problem(
                feature: CPUFeatureProblem(name: feature.name, kind: .extra, locations: feature.locations),
                reason: "QEMU \(capabilities.version) turns it on under \(capabilities.accelerator.rawValue) and cannot turn it off"
            ))
        }
        return verdict
    }
}
