import KeelCPU

/// An error from the QEMU driver, with an extensible code and, for CPU refusals, the features
/// and bits behind it.
public struct QEMUError: Error, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        public static let invalidArgument = Code(rawValue: "invalid-argument")
        public static let invalidState = Code(rawValue: "invalid-state")
        public static let notFound = Code(rawValue: "not-found")
        public static let alreadyExists = Code(rawValue: "already-exists")
        public static let incompatibleCPU = Code(rawValue: "incompatible-cpu")
        public static let unsupported = Code(rawValue: "unsupported")
        public static let timeout = Code(rawValue: "timeout")
        public static let processExited = Code(rawValue: "process-exited")
        public static let protocolViolation = Code(rawValue: "protocol-violation")
        public static let busy = Code(rawValue: "busy")
        public static let io = Code(rawValue: "io")
    }

    public var code: Code
    public var message: String
    public var features: [CPUFeatureProblem]
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, features: [CPUFeatureProblem] = [], cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.features = features
        self.cause = cause
    }

    public var description: String { message }
}
