import KeelCPU

/// Whether a host can reproduce a saved or migrating guest CPU exactly, decided from the CPU,
/// the host's probed QEMU capabilities and its administrator's ceiling — before QEMU starts.
///
/// The decision itself needs the host's QEMU capabilities and lives with the driver
/// (`CPUVerdict.decide` in `KeelQEMU`); the verdict is plain data so that pure protocol code (the
/// migration destination) can take it as an input and carry it across the wire.
public struct CPUVerdict: Sendable, Hashable {
    /// One feature the host cannot reproduce, with its CPUID bits and why.
    public struct Problem: Sendable, Hashable {
        public var feature: CPUFeatureProblem
        public var reason: String

        public init(feature: CPUFeatureProblem, reason: String) {
            self.feature = feature
            self.reason = reason
        }
    }

    public var missing: [Problem]
    public var extra: [Problem]
    public var reasons: [String]

    public init(missing: [Problem] = [], extra: [Problem] = [], reasons: [String] = []) {
        self.missing = missing
        self.extra = extra
        self.reasons = reasons
    }

    public var restorable: Bool { missing.isEmpty && extra.isEmpty && reasons.isEmpty }

    /// A one-paragraph explanation naming each feature and its bits.
    public var message: String {
        var parts = reasons
        for problem in missing {
            parts.append("missing \(problem.feature.name) (\(problem.feature.locations.map(\.description).joined(separator: ", "))): \(problem.reason)")
        }
        for problem in extra {
            parts.append("extra \(problem.feature.name) (\(problem.feature.locations.map(\.description).joined(separator: ", "))): \(problem.reason)")
        }
        return parts.joined(separator: "; ")
    }
}
