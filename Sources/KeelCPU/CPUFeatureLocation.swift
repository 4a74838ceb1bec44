/// Where a CPU feature lives: a bit mask in one register of a CPUID leaf, or in an MSR.
public enum CPUFeatureLocation: Sendable, Hashable, CustomStringConvertible {
    public enum Register: String, Sendable, Hashable, CaseIterable {
        case eax, ebx, ecx, edx
    }

    case cpuid(leaf: UInt32, subleaf: UInt32, register: Register, mask: UInt32)
    case msr(index: UInt32, register: Register, mask: UInt32)

    /// The bit numbers set in the mask, lowest first.
    public var bits: [Int] {
        let mask: UInt32
        switch self {
        case .cpuid(_, _, _, let m), .msr(_, _, let m): mask = m
        }
        return (0..<32).filter { mask & (1 << UInt32($0)) != 0 }
    }

    public var description: String {
        let bitText = bits.map(String.init).joined(separator: ",")
        switch self {
        case .cpuid(let leaf, let subleaf, let register, _):
            return "CPUID[eax=\(hex(leaf)),ecx=\(hex(subleaf))].\(register.rawValue.uppercased()) bit \(bitText)"
        case .msr(let index, let register, _):
            return "MSR \(hex(index)).\(register.rawValue.uppercased()) bit \(bitText)"
        }
    }
}

func hex(_ value: UInt32) -> String {
    "0x" + String(value, radix: 16)
}
