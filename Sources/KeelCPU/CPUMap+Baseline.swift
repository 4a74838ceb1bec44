extension CPUMap {
    /// The most capable CPU that every one of `cpus` can run (libvirt's virCPUBaseline and
    /// virCPUx86Baseline).
    ///
    /// - Parameters:
    ///   - cpus: host CPUs (guest CPUs are accepted too and read as libvirt reads them).
    ///   - hypervisorModels: restrict the result to these models (name → blocking features).
    ///   - allowedFeatures: when given, the result may only use these features.
    ///   - expandFeatures: list every feature of the chosen model explicitly (virsh --features).
    ///   - migratable: drop features that block migration.
    /// - Throws: `CPUError` with libvirt's messages ("CPUs are incompatible", "CPU vendors do
    ///   not match", …).
    public func baseline(
        _ cpus: [CPUDefinition],
        hypervisorModels: [String: [String]]? = nil,
        allowedFeatures: [String]? = nil,
        expandFeatures: Bool = false,
        migratable: Bool = false
    ) throws -> CPUDefinition {
        guard let first = cpus.first else {
            throw CPUError(.invalidArgument, "no CPUs given")
        }
        for (index, cpu) in cpus.enumerated() where cpu.model == nil {
            throw CPUError(.invalidArgument, "no CPU model specified at index \(index)")
        }
        if let arch = first.arch, !Self.x86Architectures.contains(arch) {
            throw CPUError(.unsupported, "'\(arch)' architecture is not supported by CPU driver")
        }
        var base = try bits(of: first, .all)
        var outputVendor = true
        var vendor: Vendor?
        if let name = first.vendor {
            guard let found = self.vendor(named: name) else {
                throw CPUError(.operationFailed, "Unknown CPU vendor \(name)")
            }
            vendor = found
        } else {
            outputVendor = false
        }
        var modelNames: [String] = []
        if let name = first.model { modelNames.append(name) }
        for cpu in cpus.dropFirst() {
            if let name = cpu.model, !modelNames.contains(name) {
                modelNames.append(name)
            }
            let cpuBits = try bits(of: cpu, .all)
            let modelVendor = cpu.model.flatMap { model(named: $0) }?.vendor
            if let cpuVendor = cpu.vendor, let modelVendor, cpuVendor != modelVendor {
                throw CPUError(.operationFailed, "CPU vendor \(modelVendor) of model \(cpu.model ?? "") differs from vendor \(cpuVendor)")
            }
            var name: String?
            if let cpuVendor = cpu.vendor {
                name = cpuVendor
            } else {
                outputVendor = false
                name = modelVendor
            }
            if let name {
                if let vendor {
                    if vendor.name != name {
                        throw CPUError(.operationFailed, "CPU vendors do not match")
                    }
                } else {
                    guard let found = self.vendor(named: name) else {
                        throw CPUError(.operationFailed, "Unknown CPU vendor \(name)")
                    }
                    vendor = found
                }
            }
            base.formIntersection(cpuBits)
        }
        if let allowedFeatures {
            base.formIntersection(bits(ofFeatures: allowedFeatures))
        }
        if base.isEmpty {
            throw CPUError(.operationFailed, "CPUs are incompatible")
        }
        var result = try decode(
            DecodeInput(bits: base, vendor: vendor?.name),
            as: .guest,
            hypervisorModels: hypervisorModels,
            preferred: modelNames,
            migratable: migratable
        )
        result.signature = nil
        result.fallback = modelNames.count == 1 && result.model == modelNames[0] ? .forbid : .allow
        if !outputVendor {
            result.vendor = nil
        }
        if expandFeatures {
            result = try self.expandFeatures(result)
        }
        return result
    }

    /// Lists every feature of the CPU's model explicitly, keeping explicit require/disable
    /// policies (libvirt's virCPUx86ExpandFeatures).
    ///
    /// - Throws: `CPUError` when the model is unknown.
    public func expandFeatures(_ cpu: CPUDefinition) throws -> CPUDefinition {
        guard let name = cpu.model, let model = model(named: name) else {
            throw CPUError(.notFound, "unknown CPU model \(cpu.model ?? "")")
        }
        let host = cpu.type == .host
        var expanded = cpu
        expanded.features = []
        var bits = model.bits
        appendFeatures(from: &bits, policy: host ? nil : .require, to: &expanded)
        for feature in cpu.features {
            if !host && feature.policy != .require && feature.policy != .disable {
                continue
            }
            expanded.updateFeature(feature.name, feature.effectivePolicy)
        }
        if !host {
            for removed in model.removedFeatures {
                expanded.addFeatureIfMissing(removed, .disable)
            }
        }
        // libvirt's virCPUExpandFeatures sorts by name with strcmp.
        expanded.features.sort { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        return expanded
    }

    /// A copy of `cpu` without the features that block migration (virCPUx86CopyMigratable).
    public func migratableCopy(of cpu: CPUDefinition) -> CPUDefinition {
        var copy = cpu
        copy.features.removeAll { feature(named: $0.name)?.migratable == false }
        return copy
    }
}
