/// A set of CPUID/MSR bits, indexed densely by the CPU map that created it.
///
/// libvirt keeps CPU data as lists of CPUID leaves and MSRs and compares them bit by bit; Keel
/// gives every bit that any feature of the map uses one position in a bit vector, so that union,
/// intersection, difference and subset tests become a few word operations. Bits outside the map
/// never influence libvirt's results (every algorithm walks the map's features), except for one
/// emptiness test in the live update, which `CPUIDData` answers separately.
public struct FeatureBits: Sendable, Hashable {
    @usableFromInline var words: [UInt64]

    @inlinable init(wordCount: Int) {
        words = Array(repeating: 0, count: wordCount)
    }

    @inlinable public var isEmpty: Bool {
        for word in words where word != 0 { return false }
        return true
    }

    @inlinable mutating func insert(bit: Int) {
        words[bit >> 6] |= 1 << UInt64(bit & 63)
    }

    @inlinable func contains(bit: Int) -> Bool {
        words[bit >> 6] & (1 << UInt64(bit & 63)) != 0
    }

    @inlinable public mutating func formUnion(_ other: FeatureBits) {
        for index in words.indices { words[index] |= other.words[index] }
    }

    @inlinable public mutating func subtract(_ other: FeatureBits) {
        for index in words.indices { words[index] &= ~other.words[index] }
    }

    @inlinable public mutating func formIntersection(_ other: FeatureBits) {
        for index in words.indices { words[index] &= other.words[index] }
    }

    @inlinable public func union(_ other: FeatureBits) -> FeatureBits {
        var copy = self
        copy.formUnion(other)
        return copy
    }

    @inlinable public func subtracting(_ other: FeatureBits) -> FeatureBits {
        var copy = self
        copy.subtract(other)
        return copy
    }

    @inlinable public func intersection(_ other: FeatureBits) -> FeatureBits {
        var copy = self
        copy.formIntersection(other)
        return copy
    }

    /// Whether every bit of `other` is in `self` (libvirt's x86DataIsSubset(self, other)).
    @inlinable public func isSuperset(of other: FeatureBits) -> Bool {
        for index in words.indices where other.words[index] & ~words[index] != 0 {
            return false
        }
        return true
    }
}

/// The bits of one feature: few words, so they are kept sparse for fast subset tests.
public struct SparseBits: Sendable, Hashable {
    @usableFromInline var entries: [(word: Int, mask: UInt64)]

    init(_ bits: FeatureBits) {
        entries = bits.words.enumerated().compactMap { $0.element == 0 ? nil : ($0.offset, $0.element) }
    }

    public static func == (lhs: SparseBits, rhs: SparseBits) -> Bool {
        lhs.entries.elementsEqual(rhs.entries) { $0.word == $1.word && $0.mask == $1.mask }
    }

    public func hash(into hasher: inout Hasher) {
        for entry in entries {
            hasher.combine(entry.word)
            hasher.combine(entry.mask)
        }
    }

    /// Whether `bits` contains every bit of this feature.
    @inlinable public func isSubset(of bits: FeatureBits) -> Bool {
        for entry in entries where bits.words[entry.word] & entry.mask != entry.mask {
            return false
        }
        return true
    }

    @inlinable func add(to bits: inout FeatureBits) {
        for entry in entries { bits.words[entry.word] |= entry.mask }
    }

    @inlinable func remove(from bits: inout FeatureBits) {
        for entry in entries { bits.words[entry.word] &= ~entry.mask }
    }
}
