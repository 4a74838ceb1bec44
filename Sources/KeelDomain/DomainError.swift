/// An error about a domain definition, a save cookie or an ABI record.
public struct DomainError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        public static let invalidXML = Code(rawValue: "invalid-xml")
        public static let invalidArgument = Code(rawValue: "invalid-argument")
        /// The guest-visible ABI of two definitions differs (libvirt's VIR_ERR_CONFIG_UNSUPPORTED).
        public static let abiMismatch = Code(rawValue: "abi-mismatch")
        public static let unsupported = Code(rawValue: "unsupported")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
