extension CPUMap {
    /// CPU data to decode: feature bits, the vendor (from CPUID leaf 0) and the signature
    /// (CPUID leaf 1 EAX, 0 when unknown).
    public struct DecodeInput: Sendable, Hashable {
        public var bits: FeatureBits
        public var vendor: String?
        public var signature: UInt32

        public init(bits: FeatureBits, vendor: String? = nil, signature: UInt32 = 0) {
            self.bits = bits
            self.vendor = vendor
            self.signature = signature & 0x0fff_3fff
        }
    }

    /// Turns CPU data into the closest model plus required and disabled features (libvirt's
    /// x86Decode).
    ///
    /// - Parameters:
    ///   - input: the data.
    ///   - type: decode as a host CPU (models must be subsets of the data) or a guest CPU.
    ///   - hypervisorModels: when given, only these models may be chosen; each maps to the
    ///     features that block it on this hypervisor.
    ///   - preferred: model names to prefer; a single preferred model wins outright.
    ///   - fallback: with a single preferred model the hypervisor lacks, `.allow` picks the
    ///     closest one instead of failing.
    ///   - migratable: drop features that block migration.
    /// - Returns: a definition of `type` with model, vendor, features and signature set.
    public func decode(
        _ input: DecodeInput,
        as type: CPUDefinition.Kind,
        hypervisorModels: [String: [String]]? = nil,
        preferred: [String] = [],
        fallback: CPUDefinition.Fallback = .allow,
        migratable: Bool = false
    ) throws -> CPUDefinition {
        var data = input.bits
        let signature = input.signature
        let vendor = input.vendor.flatMap { self.vendor(named: $0) }?.name
        filterTSX(&data, vendor: vendor, signature: signature)

        var best: (model: Model, cpu: CPUDefinition)?
        for candidate in models.reversed() {
            var blockers: [String]?
            if let hypervisorModels {
                guard let modelBlockers = hypervisorModels[candidate.name] else {
                    if preferred.count == 1 && candidate.name == preferred[0] && fallback != .allow {
                        throw CPUError(.unsupported, "CPU model \(preferred[0]) is not supported by hypervisor")
                    }
                    continue
                }
                blockers = modelBlockers
            }
            if let vendor, let candidateVendor = candidate.vendor, vendor != candidateVendor {
                continue
            }
            let cpuCandidate = candidateCPU(data, candidate, blockers: blockers, type: type)
            let verdict = useCandidate(
                current: best?.model, cpuCurrent: best?.cpu, candidate: candidate,
                cpuCandidate: cpuCandidate, signature: signature, preferred: preferred
            )
            if verdict.use {
                var chosen = cpuCandidate
                if type == .host {
                    for index in chosen.features.indices { chosen.features[index].policy = nil }
                }
                best = (candidate, chosen)
                if verdict.stop { break }
            }
        }
        guard var result = best?.cpu else {
            throw CPUError(.operationFailed, "Cannot find suitable CPU model for given data")
        }
        if migratable {
            result.features.removeAll { feature(named: $0.name)?.migratable == false }
        }
        result.vendor = vendor
        let (family, model, stepping) = CPUMap.decodeSignature(signature)
        result.signature = CPUDefinition.Signature(family: family, model: model, stepping: stepping)
        return result
    }

    /// Drops Intel's broken TSX (hle, rtm) on the CPUs that have it.
    private func filterTSX(_ data: inout FeatureBits, vendor: String?, signature: UInt32) {
        guard vendor == "Intel" else { return }
        let (family, model, stepping) = CPUMap.decodeSignature(signature)
        guard family == 6 && ((model == 63 && stepping < 4) || model == 60 || model == 69 || model == 70) else { return }
        for name in ["hle", "rtm"] {
            if let feature = feature(named: name) {
                feature.bits.remove(from: &data)
            }
        }
    }

    /// The CPU that `candidate` plus explicit features makes of `data` (libvirt's x86DataToCPU).
    private func candidateCPU(_ data: FeatureBits, _ candidate: Model, blockers: [String]?, type: CPUDefinition.Kind) -> CPUDefinition {
        var extra = data.subtracting(candidate.bits)
        var missing = candidate.bits.subtracting(data)
        if let blockers {
            for name in blockers {
                if let feature = feature(named: name), !feature.bits.isSubset(of: extra) {
                    feature.bits.add(to: &missing)
                }
            }
        }
        var cpu = CPUDefinition(type: .guest, model: candidate.name)
        appendFeatures(from: &extra, policy: .require, to: &cpu)
        appendFeatures(from: &missing, policy: .disable, to: &cpu)
        if type == .guest {
            for name in candidate.removedFeatures {
                cpu.addFeatureIfMissing(name, .disable)
            }
        }
        cpu.type = type
        if type == .host { cpu.mode = nil }
        return cpu
    }

    /// Appends every feature wholly in `bits`, in map order, removing its bits as it goes
    /// (libvirt's x86DataToCPUFeatures).
    func appendFeatures(from bits: inout FeatureBits, policy: CPUDefinition.Policy?, to cpu: inout CPUDefinition) {
        for feature in features where feature.bits.isSubset(of: bits) {
            feature.bits.remove(from: &bits)
            cpu.addFeatureIfMissing(feature.name, policy ?? .require)
        }
    }

    /// Whether a candidate model fits better than the current one (x86DecodeUseCandidate).
    private func useCandidate(
        current: Model?, cpuCurrent: CPUDefinition?, candidate: Model, cpuCandidate: CPUDefinition,
        signature: UInt32, preferred: [String]
    ) -> (use: Bool, stop: Bool) {
        if cpuCandidate.type == .host && !candidate.decodeHost { return (false, false) }
        if cpuCandidate.type == .guest && !candidate.decodeGuest { return (false, false) }
        if cpuCandidate.type == .host && cpuCandidate.features.contains(where: { $0.policy == .disable }) {
            return (false, false)
        }
        let isPreferred = preferred.contains(candidate.name)
        if isPreferred && preferred.count == 1 { return (true, true) }
        guard let current, let cpuCurrent else { return (true, false) }
        if signature != 0 {
            let currentMatches = current.signaturesMatch(signature)
            let candidateMatches = candidate.signaturesMatch(signature)
            if currentMatches && !candidateMatches { return (false, false) }
            if !currentMatches && candidateMatches { return (true, false) }
        }
        return (compareFeatureLists(cpuCurrent, cpuCandidate, isPreferred: isPreferred), false)
    }

    /// libvirt's virCPUx86CompareCandidateFeatureList: fewer features wins, and for guest CPUs
    /// each disabled feature costs an increasing penalty (2, 3, 4, …).
    private func compareFeatureLists(_ current: CPUDefinition, _ candidate: CPUDefinition, isPreferred: Bool) -> Bool {
        func score(_ cpu: CPUDefinition) -> (total: Int, disabled: Int) {
            guard candidate.type != .host else { return (cpu.features.count, 0) }
            var enabled = cpu.features.count
            var disabled = 0
            var penalty = 2
            // libvirt shrinks the loop bound as it counts, so it looks at the first
            // (count − disabled-so-far) features only; the same walk is reproduced here.
            var index = 0
            while index < enabled {
                if cpu.features[index].policy == .disable {
                    enabled -= 1
                    disabled += penalty
                    penalty += 1
                }
                index += 1
            }
            return (enabled + disabled, disabled)
        }
        let (currentScore, currentDisabled) = score(current)
        let (candidateScore, candidateDisabled) = score(candidate)
        if candidateScore < currentScore || (candidateScore == currentScore && candidateDisabled < currentDisabled) {
            return true
        }
        return isPreferred && candidateDisabled < currentDisabled
    }
}
