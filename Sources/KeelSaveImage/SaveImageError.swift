#if canImport(Glibc)
import Glibc
#endif

/// An error from reading, writing or verifying a save image.
///
/// The `code` classifies the failure (callers switch on it), the `message` is a short lower-case
/// sentence naming the field and value at fault, and `cause` carries an underlying error
/// (typically an ``SaveImageError/SystemError`` with the `errno`).
public struct SaveImageError: Error, Sendable, CustomStringConvertible {
    /// The class of a failure. Extensible: new codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code's name, stable for logs and `--json` output.
        public let rawValue: String

        /// Creates a code; libraries built on this one may define their own.
        /// - Parameters:
        ///   - rawValue: The code's name.
        public init(_ rawValue: String) {
            self.rawValue = rawValue
        }

        /// The caller passed something unusable (an empty XML, a bad buffer size).
        public static let invalidArgument = Code("invalidArgument")
        /// The image was never completed: `LibvirtQemudPart` magic or a short header.
        public static let incomplete = Code("incomplete")
        /// The image is structurally wrong: bad magic, lengths or offsets that do not add up.
        public static let corrupt = Code("corrupt")
        /// The image is well formed but uses something Keel does not handle (version, compression).
        public static let unsupported = Code("unsupported")
        /// A system call failed; `cause` holds the `errno`.
        public static let io = Code("io")
        /// A length exceeds a limit (data area cap, or new XML larger than the reserved space).
        public static let tooLarge = Code("tooLarge")
        /// A compression child process failed to start or exited unsuccessfully.
        public static let processExited = Code("processExited")
        /// The QEMU migration stream does not start with the expected magic and version.
        public static let badStream = Code("badStream")

        public var description: String { rawValue }
    }

    /// A failed system call: the call's name and `errno`.
    public struct SystemError: Error, Sendable, Hashable, CustomStringConvertible {
        /// The system call that failed.
        public var call: String
        /// Its `errno`.
        public var errno: Int32

        /// Creates a system error.
        /// - Parameters:
        ///   - call: The system call.
        ///   - errno: The error number.
        public init(call: String, errno: Int32) {
            self.call = call
            self.errno = errno
        }

        public var description: String {
            "\(call): \(String(cString: strerror(errno)))"
        }
    }

    /// The class of failure.
    public var code: Code
    /// A short lower-case sentence naming what failed, the field and the value.
    public var message: String
    /// The underlying error, if any.
    public var cause: (any Error & Sendable)?

    /// Creates an error.
    /// - Parameters:
    ///   - code: The class of failure.
    ///   - message: What failed and why.
    ///   - cause: The underlying error.
    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        if let cause {
            return "\(message): \(cause)"
        }
        return message
    }

    /// An `.io` error for a failed system call, reading `errno` now.
    static func system(_ message: String, call: String, errno code: Int32 = errno) -> SaveImageError {
        SaveImageError(.io, message, cause: SystemError(call: call, errno: code))
    }
}
