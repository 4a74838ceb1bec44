/// What QEMU reports for a started vCPU: the features it enabled and the ones it had to filter.
public struct LiveCPUData: Sendable, Hashable {
    public var enabled: FeatureBits
    public var disabled: FeatureBits
    /// Whether the filtered data has bits no feature of the map covers.
    public var disabledHasUnmappedBits: Bool

    public init(enabled: FeatureBits, disabled: FeatureBits, disabledHasUnmappedBits: Bool = false) {
        self.enabled = enabled
        self.disabled = disabled
        self.disabledHasUnmappedBits = disabledHasUnmappedBits
    }
}

/// The result of a live update: the updated CPU and what changed.
public struct LiveCPUUpdate: Sendable, Hashable {
    /// The CPU with the features QEMU added set to require and those it dropped set to disable.
    public var cpu: CPUDefinition
    /// Features the hypervisor enabled although the CPU did not ask for them.
    public var added: [String]
    /// Features the CPU asked for that the hypervisor did not provide.
    public var removed: [String]
}

extension CPUMap {
    /// Brings a guest CPU in line with what QEMU really gave the guest (libvirt's
    /// virCPUUpdateLive / virCPUx86UpdateLive).
    ///
    /// With `check='full'` any difference is an error that names the features and their bits;
    /// otherwise unexpected features become `require`, missing ones `disable`. The CPU is
    /// returned unchanged when the update does not apply (not custom and not check=full).
    ///
    /// - Throws: `CPUError` `.operationFailed` with libvirt's "guest CPU doesn't match
    ///   specification: …" message.
    public func updateLive(_ cpu: CPUDefinition, with data: LiveCPUData) throws -> LiveCPUUpdate {
        guard cpu.mode == .custom || cpu.check == .full else {
            return LiveCPUUpdate(cpu: cpu, added: [], removed: [])
        }
        var cpu = cpu
        let passthrough = cpu.isPassthrough
        let model = try bits(of: cpu, .all)
        let modelDisabled = passthrough ? try bits(of: cpu, .only(.disable)) : emptyBits()
        let full = cpu.check == .full
        var added: [Feature] = []
        var removed: [Feature] = []
        for feature in features {
            var expected: CPUDefinition.Policy?
            if feature.bits.isSubset(of: model) {
                expected = .require
            } else if !passthrough || feature.bits.isSubset(of: modelDisabled) {
                expected = .disable
            }
            if expected == .disable && feature.bits.isSubset(of: data.enabled) {
                added.append(feature)
                if !full { cpu.updateFeature(feature.name, .require) }
            }
            if feature.bits.isSubset(of: data.disabled)
                || (expected == .require && !feature.bits.isSubset(of: data.enabled)) {
                removed.append(feature)
                if !full { cpu.updateFeature(feature.name, .disable) }
            }
        }
        if let name = cpu.model, let mapModel = self.model(named: name) {
            for removedFeature in mapModel.removedFeatures {
                cpu.addFeatureIfMissing(removedFeature, .disable)
            }
        }
        if full && (!added.isEmpty || !removed.isEmpty) {
            let addedNames = added.map(\.name).joined(separator: ",")
            let removedNames = removed.map(\.name).joined(separator: ",")
            let detail: String
            if !added.isEmpty && !removed.isEmpty {
                detail = "extra features: \(addedNames), missing features: \(removedNames)"
            } else if !added.isEmpty {
                detail = "extra features: \(addedNames)"
            } else {
                detail = "missing features: \(removedNames)"
            }
            throw CPUError(
                .operationFailed,
                "guest CPU doesn't match specification: " + detail,
                features: added.map { CPUFeatureProblem(name: $0.name, kind: .extra, locations: $0.locations) }
                    + removed.map { CPUFeatureProblem(name: $0.name, kind: .missing, locations: $0.locations) }
            )
        }
        if full && (!data.disabled.isEmpty || data.disabledHasUnmappedBits) {
            throw CPUError(.operationFailed, "guest CPU doesn't match specification")
        }
        return LiveCPUUpdate(cpu: cpu, added: added.map(\.name), removed: removed.map(\.name))
    }
}
