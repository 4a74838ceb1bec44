extension CPUMap {
    /// libvirt 9.0's x86 CPU map (its `cpu_map` directory, in the compact form; a test checks it
    /// against an installed libvirt). Keel's built-in map comes from QEMU, whose model definitions
    /// differ from libvirt's frozen copies (QEMU's qemu64 has lahf_lm, its pentium3 apic, …), so
    /// a CPU that libvirt must read is written relative to libvirt's definitions.
    public static let libvirt: Result<CPUMap, CPUError> = {
        do {
            return .success(try load(compactText: LibvirtCPUMapCompact.text))
        } catch let error as CPUError {
            return .failure(error)
        } catch {
            return .failure(CPUError(.invalidMap, "cannot load libvirt's CPU map: \(error)"))
        }
    }()

    /// The compact form committed for libvirt 9.0's map.
    public static var libvirtCompactText: String { LibvirtCPUMapCompact.text }

    /// The x86 feature names libvirt 9.0 knows. A CPU that libvirt must read may only name these:
    /// libvirt refuses to start a CPU with a feature it does not know.
    public static let libvirtFeatureNames: Set<String> = (try? libvirt.get()).map { Set($0.features.map(\.name)) } ?? []

    /// The same guest CPU — the same CPUID bits — written in libvirt 9.0's vocabulary: its model
    /// definitions, only the features libvirt knows, every difference from libvirt's model listed
    /// explicitly (require or disable), so that libvirt starting it gets exactly these bits.
    ///
    /// Features libvirt's map does not know (KVM's paravirtual leaves) are left out: libvirt
    /// neither names nor checks them.
    /// - Parameter cpu: a custom CPU on this map.
    /// - Throws: `CPUError` for a model or feature this map does not know.
    public func libvirtCPU(for cpu: CPUDefinition) throws -> CPUDefinition {
        guard cpu.mode == .custom || cpu.mode == nil, cpu.model != nil else { return cpu }
        let libvirt = try CPUMap.libvirt.get()
        let names = featureNames(in: try bits(of: cpu, .all))
        let wanted = libvirt.bits(ofFeatures: names)
        var result = cpu
        if let name = cpu.model, let model = libvirt.model(named: name) {
            result.features = []
            for feature in libvirt.features {
                let inModel = feature.bits.isSubset(of: model.bits)
                let inWanted = feature.bits.isSubset(of: wanted)
                if inWanted && !inModel {
                    result.features.append(.init(feature.name, .require))
                } else if inModel && !inWanted {
                    result.features.append(.init(feature.name, .disable))
                }
            }
            for removed in model.removedFeatures {
                result.addFeatureIfMissing(removed, .disable)
            }
        } else {
            // A model libvirt does not know (QEMU's versioned ones): libvirt's closest model.
            let decoded = try libvirt.decode(DecodeInput(bits: wanted, vendor: cpu.vendor), as: .guest)
            result.model = decoded.model
            result.features = decoded.features
        }
        return result
    }
}
