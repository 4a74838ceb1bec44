/// Why talking to `keeld` failed before it could answer: the socket, the connection or the
/// bytes on it. Errors the daemon reports are `KeeldError`s instead.
public struct ClientError: Error, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Sendable, Hashable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        /// No socket at the path: keeld is not running there.
        public static let socketMissing = Code(rawValue: "socket-missing")
        /// The socket exists but nobody accepts on it (a stale socket).
        public static let connectionRefused = Code(rawValue: "connection-refused")
        /// The socket's mode or keeld's peer check keeps this user out.
        public static let permissionDenied = Code(rawValue: "permission-denied")
        /// The connection ended before a whole answer arrived.
        public static let connectionClosed = Code(rawValue: "connection-closed")
        /// The answer is not HTTP/1.1, or its body is not what the API promises.
        public static let protocolViolation = Code(rawValue: "protocol-violation")
        /// No whole answer within the deadline.
        public static let timeout = Code(rawValue: "timeout")
        /// Any other system call failure.
        public static let io = Code(rawValue: "io")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
