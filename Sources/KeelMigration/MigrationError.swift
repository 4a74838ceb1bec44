import KeelCPU
import KeelDomain

/// An error of a migration: a refusal by either side, a local step that failed, a lost peer.
///
/// It crosses the wire in an `abort` message (see `MigrationMessage`), so it carries data rather
/// than a flattened string: the code, the message, the mandatory cookie feature behind a refusal
/// and, for a CPU the destination cannot reproduce, the whole verdict with each feature's CPUID
/// bits.
public struct MigrationError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        public static let invalidArgument = Code(rawValue: "invalid-argument")
        public static let invalidState = Code(rawValue: "invalid-state")
        public static let invalidCookie = Code(rawValue: "invalid-cookie")
        public static let incompatibleCPU = Code(rawValue: "incompatible-cpu")
        public static let unsupported = Code(rawValue: "unsupported")
        /// No protocol version both sides speak.
        public static let unsupportedProtocol = Code(rawValue: "unsupported-protocol")
        public static let timeout = Code(rawValue: "timeout")
        public static let processExited = Code(rawValue: "process-exited")
        public static let protocolViolation = Code(rawValue: "protocol-violation")
        public static let peerLost = Code(rawValue: "peer-lost")
        /// The user (or the peer on the user's behalf) aborted the migration.
        public static let aborted = Code(rawValue: "aborted")
        /// A local step (pause, migrate, start QEMU, commit a definition …) failed.
        public static let operationFailed = Code(rawValue: "operation-failed")
    }

    public var code: Code
    public var message: String
    /// The mandatory cookie feature a reader refused (`<feature name='X'/>`).
    public var cookieFeature: String?
    /// For `.incompatibleCPU`: every feature the destination cannot reproduce, with its bits.
    public var verdict: CPUVerdict?

    public init(_ code: Code, _ message: String, cookieFeature: String? = nil, verdict: CPUVerdict? = nil) {
        self.code = code
        self.message = message
        self.cookieFeature = cookieFeature
        self.verdict = verdict
    }

    /// The CPU features behind a CPU refusal, missing ones first.
    public var features: [CPUFeatureProblem] {
        guard let verdict else { return [] }
        return verdict.missing.map(\.feature) + verdict.extra.map(\.feature)
    }

    public var description: String { message }
}
