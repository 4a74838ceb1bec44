import KeelCPU
import KeelQMP

extension CPUIDWord {
    /// Reads the value of a vCPU's `feature-words` or `filtered-features` QOM property.
    ///
    /// QEMU reports one object per CPUID output register it models:
    ///
    /// | member | type | meaning |
    /// |---|---|---|
    /// | `cpuid-input-eax` | int | the leaf |
    /// | `cpuid-input-ecx` | int, optional | the subleaf; absent for leaves without one (0) |
    /// | `cpuid-register` | `"EAX"`…`"EDX"` | the output register |
    /// | `features` | int | the 32-bit value |
    ///
    /// - Parameter value: the `return` of `qom-get`.
    /// - Returns: the words in QEMU's order, zero words included.
    /// - Throws: `QEMUError` `.protocolViolation` naming the first malformed entry.
    public static func parseFeatureWords(_ value: QMP.Value) throws -> [CPUIDWord] {
        guard let entries = value.arrayValue else {
            throw QEMUError(.protocolViolation, "feature words are not an array: \(value)")
        }
        return try entries.enumerated().map { index, entry in
            func bad(_ why: String) -> QEMUError {
                QEMUError(.protocolViolation, "feature word \(index) \(why): \(entry)")
            }
            guard entry.objectValue != nil else { throw bad("is not an object") }
            guard let leaf = entry["cpuid-input-eax"]?.uint64Value.flatMap({ UInt32(exactly: $0) }) else {
                throw bad("has no valid cpuid-input-eax")
            }
            var subleaf: UInt32 = 0
            if let member = entry["cpuid-input-ecx"] {
                guard let value = member.uint64Value.flatMap({ UInt32(exactly: $0) }) else {
                    throw bad("has an invalid cpuid-input-ecx")
                }
                subleaf = value
            }
            guard let name = entry["cpuid-register"]?.stringValue,
                  let register = CPUFeatureLocation.Register(rawValue: name.lowercased())
            else {
                throw bad("has no valid cpuid-register")
            }
            guard let features = entry["features"]?.uint64Value.flatMap({ UInt32(exactly: $0) }) else {
                throw bad("has no valid 32-bit features")
            }
            return CPUIDWord(leaf: leaf, subleaf: subleaf, register: register, value: features)
        }
    }
}
