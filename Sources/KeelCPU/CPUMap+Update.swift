extension CPUMap {
    /// Resolves a guest CPU against a host before start (libvirt's virCPUUpdate / virCPUx86Update):
    /// optional features become require or disable by what the host has, host-model and
    /// `match='minimum'` CPUs become the host's model and features (custom/exact), and features
    /// removed from the model are listed as disabled.
    ///
    /// - Parameters:
    ///   - guest: the guest CPU.
    ///   - host: the host CPU a relative definition is resolved against (QEMU's migratable
    ///     host-model CPU in the driver).
    /// - Throws: `CPUError` for unknown models/features or a relative CPU without a host.
    public func update(_ guest: CPUDefinition, with host: CPUDefinition?) throws -> CPUDefinition {
        var guest = guest
        let relative: Bool
        switch guest.mode ?? .custom {
        case .hostPassthrough, .maximum:
            return guest
        case .hostModel:
            relative = true
        case .custom:
            if guest.model == nil { return guest }
            relative = guest.match == .minimum || guest.features.contains { $0.policy == .optional }
        }
        if relative {
            guard let host else {
                throw CPUError(.unsupported, "unknown host CPU model")
            }
            let hostBits = try bits(of: host, .all)
            for index in guest.features.indices where guest.features[index].policy == .optional {
                let supported = try contains(guest.features[index].name, in: hostBits)
                guest.features[index].policy = supported ? .require : .disable
            }
            if guest.mode == .hostModel || guest.match == .minimum {
                guest = updateHostModel(guest, host: host)
            }
        }
        guard let name = guest.model, let model = model(named: name) else {
            throw CPUError(.notFound, "Unknown CPU model \(guest.model ?? "")")
        }
        for removed in model.removedFeatures {
            guest.addFeatureIfMissing(removed, .disable)
        }
        return guest
    }

    /// libvirt's x86UpdateHostModel: the host's model and features, the guest's vendor_id and
    /// explicit features on top, as a custom/exact CPU.
    private func updateHostModel(_ guest: CPUDefinition, host: CPUDefinition) -> CPUDefinition {
        var updated = guest
        updated.model = host.model
        updated.features = host.features.map { CPUDefinition.Feature($0.name, $0.policy ?? .require) }
        let keepVendor = guest.mode == .custom
        if !keepVendor {
            updated.vendor = host.vendor
            updated.vendorID = host.vendorID
        }
        if let vendorID = guest.vendorID {
            updated.vendorID = vendorID
        }
        for feature in guest.features {
            updated.updateFeature(feature.name, feature.effectivePolicy)
        }
        updated.mode = .custom
        updated.match = .exact
        return updated
    }
}
