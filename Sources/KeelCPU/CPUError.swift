/// An error from the CPU layer: a definition libvirt would reject, a map that does not load, an
/// unknown model or feature, or an incompatibility found by one of the algorithms.
///
/// Incompatibilities are structured: `features` lists each offending feature with the CPUID or
/// MSR bits behind it, and `message` is rendered from them in libvirt's wording.
public struct CPUError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        /// The XML is not a CPU definition libvirt accepts (libvirt's VIR_ERR_XML_ERROR).
        public static let invalidXML = Code(rawValue: "invalid-xml")
        /// A value is not supported (libvirt's VIR_ERR_CONFIG_UNSUPPORTED).
        public static let unsupported = Code(rawValue: "unsupported")
        /// An argument is invalid (libvirt's VIR_ERR_INVALID_ARG).
        public static let invalidArgument = Code(rawValue: "invalid-argument")
        /// A model, feature or vendor is not in the CPU map.
        public static let notFound = Code(rawValue: "not-found")
        /// The CPU map itself is broken.
        public static let invalidMap = Code(rawValue: "invalid-map")
        /// Two CPUs are incompatible (libvirt's VIR_ERR_CPU_INCOMPATIBLE).
        public static let incompatibleCPU = Code(rawValue: "incompatible-cpu")
        /// An operation failed (libvirt's VIR_ERR_OPERATION_FAILED).
        public static let operationFailed = Code(rawValue: "operation-failed")
    }

    public var code: Code
    public var message: String
    /// The features that decide an incompatibility, when there are any.
    public var features: [CPUFeatureProblem]
    /// A lower-level error behind this one.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, features: [CPUFeatureProblem] = [], cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.features = features
        self.cause = cause
    }

    public var description: String { message }

    public static func == (lhs: CPUError, rhs: CPUError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.features == rhs.features
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(features)
    }
}

/// One feature behind an incompatibility, with where it lives in CPUID/MSR space.
public struct CPUFeatureProblem: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// Needed by the guest but not provided.
        case missing
        /// Provided (or would be added) although the guest must not have it.
        case extra
        /// Forbidden by the guest and provided by the host.
        case forbidden
    }

    public var name: String
    public var kind: Kind
    public var locations: [CPUFeatureLocation]

    public init(name: String, kind: Kind, locations: [CPUFeatureLocation]) {
        self.name = name
        self.kind = kind
        self.locations = locations
    }

    public var description: String {
        "\(name) (\(kind.rawValue); \(locations.map(\.description).joined(separator: ", ")))"
    }
}
