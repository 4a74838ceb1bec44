import KeelCPU

extension Driver {
    /// The capabilities for a virt type (`kvm`, `qemu`), or for nil the best this host has
    /// (KVM when `/dev/kvm` works, else TCG), as libvirt picks its default virt type.
    ///
    /// - Throws: `QEMUError` `.invalidArgument` for an unknown virt type, or the probe's error.
    public func capabilities(virtType: String?) async throws -> QEMUCapabilities {
        if let virtType {
            guard let accelerator = QEMUCapabilities.Accelerator(domainType: virtType) else {
                throw QEMUError(.invalidArgument, "unknown virttype '\(virtType)': use kvm or qemu")
            }
            return try await capabilities(accelerator)
        }
        do {
            return try await capabilities(.kvm)
        } catch let error as QEMUError where error.code == .unsupported {
            return try await capabilities(.tcg)
        }
    }

    /// Compares a CPU with the CPU QEMU provides on this host for a virt type (its host-model
    /// CPU), as libvirt's `hypervisor-cpu-compare` does on x86.
    ///
    /// - Parameters:
    ///   - cpu: the CPU to check.
    ///   - virtType: `kvm` or `qemu`; nil for the host's default.
    ///   - failIncompatible: throw `.incompatibleCPU` naming the features instead of returning
    ///     an incompatible result (virsh `--error`).
    /// - Throws: `QEMUError` `.unsupported` when QEMU reports no host-model CPU for the virt
    ///   type, `.invalidArgument` for CPUs the map cannot read.
    public func compareHypervisorCPU(_ cpu: CPUDefinition, virtType: String? = nil, failIncompatible: Bool = false) async throws -> CPUComparison {
        let capabilities = try await capabilities(virtType: virtType)
        guard let host = capabilities.hostModel, host.fallback == .forbid else {
            throw QEMUError(.unsupported, "QEMU '\(capabilities.binary)' does not support reporting CPU model for virttype '\(capabilities.accelerator.domainType)'")
        }
        do {
            return try map.compare(cpu, to: host, failIncompatible: failIncompatible)
        } catch let error as CPUError {
            if error.code == .incompatibleCPU {
                throw QEMUError(.incompatibleCPU, "the CPU is incompatible with host CPU: \(error.message)", features: error.features)
            }
            throw QEMUError(.invalidArgument, error.message, features: error.features)
        }
    }

    /// The CPU that QEMU can provide for a virt type and that every one of `cpus` can run, as
    /// libvirt's `hypervisor-cpu-baseline` computes it on x86: only QEMU's CPU models for the
    /// virt type (with their blockers) and the features it can enable (only migratable ones
    /// with `migratable`); the result has `fallback='forbid'`.
    ///
    /// - Throws: `QEMUError` `.unsupported` when QEMU has no CPU models for the virt type,
    ///   `.invalidArgument` with libvirt's messages ("CPUs are incompatible", …).
    public func baselineHypervisorCPU(_ cpus: [CPUDefinition], virtType: String? = nil, expandFeatures: Bool = false,
                                      migratable: Bool = false) async throws -> CPUDefinition {
        let capabilities = try await capabilities(virtType: virtType)
        var models: [String: [String]] = [:]
        for model in capabilities.cpuModels where models[model.name] == nil {
            models[model.name] = model.unavailableFeatures
        }
        if models.isEmpty {
            throw QEMUError(.unsupported, "QEMU '\(capabilities.binary)' does not support any CPU models for virttype '\(capabilities.accelerator.domainType)'")
        }
        var features = capabilities.availableFeatures
        if migratable {
            let unmigratable = Set(capabilities.unmigratableFeatures)
            features.removeAll { unmigratable.contains($0) }
        }
        do {
            var result = try map.baseline(cpus, hypervisorModels: models, allowedFeatures: features,
                                          expandFeatures: expandFeatures, migratable: migratable)
            result.fallback = .forbid
            return result
        } catch let error as CPUError {
            throw QEMUError(.invalidArgument, error.message, features: error.features)
        }
    }
}
