import KeelCPU

/// The guest CPU a consuming side — restore, snapshot revert, incoming migration — must give the
/// guest, chosen from the domain XML and the side channels the same way everywhere.
///
/// Keel's ABI record carries the whole effective CPU; libvirt's side channel (the save cookie's
/// or the migration cookie's `<cpu>`) the updated CPU in libvirt's vocabulary; a writer too old
/// to change the CPU (libvirt before 2017, migration protocol 1) sends neither, and the XML's
/// original CPU is started and updated live, as libvirt does.
public struct IncomingCPU: Sendable, Hashable {
    /// The domain XML's CPU: the original one the user asked for.
    public var original: CPUDefinition?
    /// The CPU to pin completely and verify after start; nil without a side channel.
    public var pinned: CPUDefinition?

    /// - Parameters:
    ///   - original: the CPU of the domain XML that came with the guest state.
    ///   - sideChannel: libvirt's updated CPU from the cookie, if any.
    ///   - abiRecord: Keel's ABI record from the cookie, if any.
    public init(original: CPUDefinition?, sideChannel: CPUDefinition?, abiRecord: ABIRecord?) {
        self.original = original
        self.pinned = abiRecord?.effectiveCPU ?? sideChannel
    }

    /// The CPU the host is judged against: the pinned one, else the original.
    public var target: CPUDefinition? { pinned ?? original }

    /// Whether the guest CPU can be verified exactly after QEMU starts (`check='full'` against
    /// the pinned CPU) rather than only updated live.
    public var isExact: Bool { pinned != nil }

    /// Judges the target CPU with `decide` (the host's capability and ceiling check).
    ///
    /// A custom CPU without a model needs no judgement. Without a side channel a host-model,
    /// host-passthrough or maximum CPU from the XML is started and updated live as on a fresh
    /// start, so the reasons that such a CPU cannot be checked before start do not apply.
    ///
    /// - Throws: whatever `decide` throws (an unknown model or feature).
    public func verdict(_ decide: (CPUDefinition) throws -> CPUVerdict) rethrows -> CPUVerdict {
        guard let target, target.model != nil || target.mode != .custom else { return CPUVerdict() }
        var verdict = try decide(target)
        if pinned == nil && target.mode != .custom {
            verdict.reasons = []
        }
        return verdict
    }
}
