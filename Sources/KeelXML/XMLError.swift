/// An error from reading XML: the document is too large, not well-formed, or uses a construct
/// Keel refuses (DTDs and entities).
public struct XMLError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        case tooLarge
        case malformed
        case forbiddenConstruct
        case empty
    }

    public var code: Code
    public var message: String
    /// The 1-based line of the problem, when the parser knows it.
    public var line: Int?

    public init(_ code: Code, _ message: String, line: Int? = nil) {
        self.code = code
        self.message = message
        self.line = line
    }

    public var description: String {
        if let line {
            return "malformed XML at line \(line): \(message)"
        }
        return message
    }
}
