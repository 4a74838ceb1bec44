extension CPUMap {
    /// Which features of a CPU definition to turn into bits (libvirt's x86ModelFromCPU policy).
    public enum FeatureSelection: Sendable {
        /// The model's features, plus force/require, minus disable/forbid; optional ignored.
        case all
        /// Only the features with this policy (plus the model's features for `.require`).
        case only(CPUDefinition.Policy)
    }

    /// The CPUID/MSR bits that `cpu` describes (libvirt's x86ModelFromCPU).
    ///
    /// - Throws: `CPUError` naming an unknown model or feature.
    public func bits(of cpu: CPUDefinition, _ selection: FeatureSelection = .all) throws -> FeatureBits {
        var policy: CPUDefinition.Policy?
        if case .only(let selected) = selection { policy = selected }
        if cpu.type == .host, let policy, policy != .require {
            return emptyBits()
        }
        var bits = emptyBits()
        if let name = cpu.model, policy == nil || policy == .require {
            guard let model = model(named: name) else {
                throw CPUError(.notFound, "Unknown CPU model \(name)")
            }
            bits = model.bits
        }
        for feature in cpu.features {
            let featurePolicy = feature.effectivePolicy
            if let policy {
                if featurePolicy != policy { continue }
            } else if featurePolicy == .optional {
                continue
            }
            guard let index = featureByName[feature.name] else {
                throw CPUError(.notFound, "Unknown CPU feature \(feature.name)")
            }
            let featureBits = features[index].bits
            if policy == nil && (featurePolicy == .disable || featurePolicy == .forbid) {
                featureBits.remove(from: &bits)
            } else {
                featureBits.add(to: &bits)
            }
        }
        return bits
    }

    /// The bits of the named features; unknown names are ignored.
    public func bits(ofFeatures names: some Sequence<String>) -> FeatureBits {
        var bits = emptyBits()
        for name in names {
            if let index = featureByName[name] {
                features[index].bits.add(to: &bits)
            }
        }
        return bits
    }

    /// Whether the feature `name` is wholly present in `bits`.
    ///
    /// - Throws: `CPUError` when the map has no such feature.
    public func contains(_ name: String, in bits: FeatureBits) throws -> Bool {
        guard let index = featureByName[name] else {
            throw CPUError(.notFound, "unknown CPU feature \(name)")
        }
        return features[index].bits.isSubset(of: bits)
    }

    /// The libvirt name of a QEMU feature name (`sse3` → `pni`, `tsc-adjust` → `tsc_adjust`).
    public func libvirtFeatureName(forQEMU name: String) -> String? {
        if featureByName[name] != nil { return name }
        if let index = featureByQEMUName[name] { return features[index].name }
        let underscored = name.replacingDashes()
        if featureByName[underscored] != nil { return underscored }
        return nil
    }

    /// The name QEMU uses for a libvirt feature name.
    public func qemuFeatureName(for name: String) -> String {
        if let feature = feature(named: name), let alias = feature.qemuAliases.first {
            return alias
        }
        return CPUMap.libvirtToQEMUNames[name] ?? name
    }

    /// libvirt 9.0's own translation table (virQEMUCapsCPUFeaturesX86), used when a map has no
    /// `<alias source='qemu'>` for a feature.
    static let libvirtToQEMUNames: [String: String] = [
        "cmp_legacy": "cmp-legacy", "ds_cpl": "ds-cpl", "fxsr_opt": "fxsr-opt",
        "kvm_pv_eoi": "kvm-pv-eoi", "kvm_pv_unhalt": "kvm-pv-unhalt", "lahf_lm": "lahf-lm",
        "nodeid_msr": "nodeid-msr", "pclmuldq": "pclmulqdq", "perfctr_core": "perfctr-core",
        "perfctr_nb": "perfctr-nb", "tsc_adjust": "tsc-adjust",
    ]
}

extension String {
    func replacingDashes() -> String {
        String(unicodeScalars.map { $0 == "-" ? "_" : Character($0) })
    }
}

extension CPUMap {
    /// The bits of features in the hypervisor CPUID range (0x40000000–0x4fffffff): KVM's and
    /// Hyper-V's paravirtual features, which the hypervisor provides rather than the host CPU.
    public var hypervisorLeafBits: FeatureBits {
        var bits = emptyBits()
        for feature in features where feature.locations.allSatisfy({
            if case .cpuid(let leaf, _, _, _) = $0 { return leaf >= 0x4000_0000 && leaf <= 0x4fff_ffff }
            return false
        }) {
            feature.bits.add(to: &bits)
        }
        return bits
    }
}
