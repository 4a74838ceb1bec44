/// A version of Keel's migration protocol (not Keel's version).
///
/// | version | cookie sent in Prepare | what the destination does |
/// |---|---|---|
/// | 1 | name, uuid, host; no `<cpu>`, no ABI record | starts the domain XML's original CPU and updates it live, as libvirt did before 2017; the guest CPU cannot be verified |
/// | 2 | plus the updated `<cpu>` (`check='full'`) and Keel's ABI record | judges the CPU before QEMU starts, pins every feature, verifies the live CPU equals it |
///
/// Peers offer the versions they speak in Begin; the highest common one is used for every
/// later message, and each message carries it.
public struct MigrationProtocolVersion: RawRepresentable, Sendable, Hashable, Comparable, CustomStringConvertible {
    public var rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// The previous protocol: no guest CPU in the cookie.
    public static let v1 = MigrationProtocolVersion(rawValue: 1)
    /// The current protocol: the cookie carries the updated CPU and Keel's ABI record.
    public static let v2 = MigrationProtocolVersion(rawValue: 2)

    public static let current = v2
    /// What this Keel speaks, highest first.
    public static let supported: [MigrationProtocolVersion] = [.v2, .v1]

    /// Whether cookies of this version carry the updated guest CPU and Keel's ABI record, so
    /// that the destination can pin and verify the guest CPU.
    public var carriesGuestCPU: Bool { rawValue >= 2 }

    /// Whether a destination speaking this version confirms in `prepare-reply` that its QEMU
    /// accepts the stream only over TLS (`tlsStream`); a source never sends the guest over TLS
    /// to a version that cannot say so.
    public var carriesTLSStream: Bool { rawValue >= 2 }

    public static func < (lhs: MigrationProtocolVersion, rhs: MigrationProtocolVersion) -> Bool {
        lhs.rawValue < rhs.rawValue
    }

    public var description: String { String(rawValue) }

    /// The highest version both sides speak, or nil when they share none.
    public static func negotiate(_ local: [MigrationProtocolVersion], _ remote: [MigrationProtocolVersion]) -> MigrationProtocolVersion? {
        Set(local).intersection(remote).max()
    }
}
