/// One 32-bit CPUID output register, as QEMU reports it in `feature-words`/`filtered-features`.
public struct CPUIDWord: Sendable, Hashable {
    public var leaf: UInt32
    public var subleaf: UInt32
    public var register: CPUFeatureLocation.Register
    public var value: UInt32

    public init(leaf: UInt32, subleaf: UInt32 = 0, register: CPUFeatureLocation.Register, value: UInt32) {
        self.leaf = leaf
        self.subleaf = subleaf
        self.register = register
        self.value = value
    }
}

extension CPUMap {
    /// The feature bits of raw CPUID words, and whether any set bit is unknown to the map.
    ///
    /// Leaf 0 (the vendor string) and leaf 1 EAX (the signature) are not feature bits and are
    /// ignored here; see `vendor(ofCPUID:)` and `signature(ofCPUID:)`.
    public func bits(ofCPUID words: [CPUIDWord]) -> (bits: FeatureBits, hasUnmappedBits: Bool) {
        var bits = emptyBits()
        var unmapped = false
        for word in words where word.value != 0 {
            if word.leaf == 0 || (word.leaf == 1 && word.register == .eax) { continue }
            for bit in 0..<32 where word.value & (1 << UInt32(bit)) != 0 {
                let location = CPUFeatureLocation.cpuid(leaf: word.leaf, subleaf: word.subleaf, register: word.register, mask: 1 << UInt32(bit))
                if let position = bitPosition[location] {
                    bits.insert(bit: position)
                } else {
                    unmapped = true
                }
            }
        }
        return (bits, unmapped)
    }

    /// The CPUID words that `bits` stand for, merged per leaf/subleaf/register.
    public func cpuidWords(of bits: FeatureBits) -> [CPUIDWord] {
        var merged: [CPUIDWord] = []
        var index: [String: Int] = [:]
        for (position, location) in bitLocations.enumerated() where bits.contains(bit: position) {
            guard case .cpuid(let leaf, let subleaf, let register, let mask) = location else { continue }
            let key = "\(leaf)/\(subleaf)/\(register.rawValue)"
            if let existing = index[key] {
                merged[existing].value |= mask
            } else {
                index[key] = merged.count
                merged.append(CPUIDWord(leaf: leaf, subleaf: subleaf, register: register, value: mask))
            }
        }
        return merged.sorted { ($0.leaf, $0.subleaf, $0.register.rawValue) < ($1.leaf, $1.subleaf, $1.register.rawValue) }
    }

    /// The vendor whose CPUID leaf 0 string the words carry.
    public func vendor(ofCPUID words: [CPUIDWord]) -> Vendor? {
        func value(_ register: CPUFeatureLocation.Register) -> UInt32? {
            words.first { $0.leaf == 0 && $0.subleaf == 0 && $0.register == register }?.value
        }
        guard let ebx = value(.ebx), let edx = value(.edx), let ecx = value(.ecx) else { return nil }
        var bytes: [UInt8] = []
        for word in [ebx, edx, ecx] {
            for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((word >> UInt32(shift)) & 0xff)) }
        }
        let string = String(decoding: bytes, as: UTF8.self)
        return vendors.first { $0.string == string }
    }

    /// The signature (leaf 1 EAX, masked as libvirt masks it) the words carry, or 0.
    public func signature(ofCPUID words: [CPUIDWord]) -> UInt32 {
        (words.first { $0.leaf == 1 && $0.subleaf == 0 && $0.register == .eax }?.value ?? 0) & 0x0fff_3fff
    }
}
