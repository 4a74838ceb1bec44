/// The outcome of comparing a CPU with a host CPU (libvirt's virCPUCompareResult).
public struct CPUComparison: Sendable, Hashable {
    public enum Result: String, Sendable, Hashable {
        case incompatible
        case identical
        case superset
    }

    public var result: Result
    /// libvirt's explanation for an incompatible result, e.g.
    /// "Host CPU does not provide required features: hle, rtm".
    public var message: String?
    /// The features that decide the result: what is missing, forbidden, or (for a superset)
    /// what the host has beyond the CPU.
    public var features: [CPUFeatureProblem]

    public init(result: Result, message: String? = nil, features: [CPUFeatureProblem] = []) {
        self.result = result
        self.message = message
        self.features = features
    }
}

extension CPUMap {
    static let x86Architectures: Set<String> = ["i686", "x86_64"]

    /// Compares `cpu` with `host` (libvirt's virCPUx86Compare and x86Compute).
    ///
    /// - Parameters:
    ///   - cpu: the CPU to check, guest or host.
    ///   - host: the host CPU.
    ///   - failIncompatible: throw instead of returning an incompatible result (virsh --error).
    /// - Throws: `CPUError` for unknown models or features, and with `failIncompatible` a
    ///   `.incompatibleCPU` error carrying the deciding features.
    public func compare(_ cpu: CPUDefinition, to host: CPUDefinition?, failIncompatible: Bool = false) throws -> CPUComparison {
        guard let host, host.model != nil else {
            if failIncompatible {
                throw CPUError(.incompatibleCPU, "unknown host CPU")
            }
            return CPUComparison(result: .incompatible, message: "unknown host CPU")
        }
        let comparison = try compute(host: host, cpu: cpu)
        if comparison.result == .incompatible && failIncompatible {
            throw CPUError(.incompatibleCPU, comparison.message ?? "the CPU is incompatible with host CPU", features: comparison.features)
        }
        return comparison
    }

    private func compute(host: CPUDefinition, cpu: CPUDefinition) throws -> CPUComparison {
        if let arch = cpu.arch, !Self.x86Architectures.contains(arch) {
            return CPUComparison(result: .incompatible, message: "CPU arch \(arch) does not match host arch")
        }
        if let vendor = cpu.vendor, host.vendor != vendor {
            return CPUComparison(result: .incompatible, message: "host CPU vendor does not match required CPU vendor \(vendor)")
        }
        let hostBits = try bits(of: host, .all)
        let force = try bits(of: cpu, .only(.force))
        var require = try bits(of: cpu, .only(.require))
        let optional = try bits(of: cpu, .only(.optional))
        let disable = try bits(of: cpu, .only(.disable))
        let forbid = try bits(of: cpu, .only(.forbid))

        let forbiddenPresent = forbid.intersection(hostBits)
        if !forbiddenPresent.isEmpty {
            return incompatible("Host CPU provides forbidden features", forbiddenPresent, .forbidden)
        }
        // Features inherited from the model but explicitly forced, disabled or made optional no
        // longer count as required.
        require.subtract(force)
        require.subtract(optional)
        require.subtract(disable)
        if !hostBits.isSuperset(of: require) {
            return incompatible("Host CPU does not provide required features", require.subtracting(hostBits), .missing)
        }
        var diff = hostBits
        diff.subtract(optional)
        diff.subtract(require)
        diff.subtract(disable)
        diff.subtract(force)
        if diff.isEmpty {
            return CPUComparison(result: .identical)
        }
        if cpu.type == .guest && cpu.match == .strict {
            return incompatible("Host CPU does not strictly match guest CPU: Extra features", diff, .extra)
        }
        return CPUComparison(result: .superset, features: problems(.extra, in: diff))
    }

    private func incompatible(_ message: String, _ bits: FeatureBits, _ kind: CPUFeatureProblem.Kind) -> CPUComparison {
        let problems = problems(kind, in: bits)
        return CPUComparison(
            result: .incompatible,
            message: message + ": " + problems.map(\.name).joined(separator: ", "),
            features: problems
        )
    }
}
