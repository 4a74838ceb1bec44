import KeelCPU
import KeelQMP

extension Driver {
    /// What QEMU really gave vCPU 0: the enabled and the filtered CPUID words (libvirt's legacy
    /// x86 path, `feature-words` and `filtered-features`: two commands, bit-exact).
    func fetchLiveCPU(_ client: QMP.Client) async throws -> (enabled: [CPUIDWord], filtered: [CPUIDWord]) {
        let cpus = try await client.execute("query-cpus-fast")
        let path = cpus[0]?["qom-path"]?.stringValue ?? "/machine/unattached/device[0]"
        let enabled = try await client.execute("qom-get", arguments: ["path": .string(path), "property": "feature-words"])
        let filtered = try await client.execute("qom-get", arguments: ["path": .string(path), "property": "filtered-features"])
        return (try CPUIDWord.parseFeatureWords(enabled), try CPUIDWord.parseFeatureWords(filtered))
    }

    /// Brings `cpu` in line with what QEMU enabled (libvirt's qemuProcessUpdateLiveGuestCPU):
    /// returns the updated CPU with check='full' and, when it differs from `cpu`, the original.
    ///
    /// - Throws: `QEMUError` `.incompatibleCPU` naming every extra or missing feature with its
    ///   bits when `cpu` has check='full' and QEMU differs.
    func applyLiveUpdate(to cpu: CPUDefinition?, enabled: [CPUIDWord], filtered: [CPUIDWord]) throws -> (updated: CPUDefinition?, original: CPUDefinition?) {
        guard let cpu, cpu.model != nil || cpu.mode != .custom else { return (cpu, nil) }
        let (enabledBits, _) = map.bits(ofCPUID: enabled)
        let (filteredBits, unmapped) = map.bits(ofCPUID: filtered)
        let update: LiveCPUUpdate
        do {
            update = try map.updateLive(cpu, with: LiveCPUData(enabled: enabledBits, disabled: filteredBits, disabledHasUnmappedBits: unmapped))
        } catch let error as CPUError {
            throw QEMUError(.incompatibleCPU, error.message, features: error.features)
        }
        var updated = update.cpu
        let original: CPUDefinition? = updated.isABIEqual(to: cpu) ? nil : cpu
        if updated.mode == .custom || updated.check == .full {
            updated.check = .full
        }
        return (updated, original)
    }
}

