/// The QEMU Machine Protocol: a JSON line protocol on QEMU's monitor socket.
///
/// Layers, bottom up: ``QMP/Value`` (JSON values), ``QMP/LineFramer`` (CRLF-terminated
/// messages), ``QMP/Connection`` (the pure protocol state machine: greeting, capabilities
/// negotiation, id-correlated replies, events) and ``QMP/Client`` (the state machine on a
/// Unix stream socket, with deadlines and file-descriptor passing).
public enum QMP {}

extension QMP {
    /// Why a QMP operation failed.
    ///
    /// QEMU's own refusals stay data (``commandFailed(class:desc:)``), so callers can branch on
    /// the error class (`GenericError`, `CommandNotFound`, `DeviceNotFound`, …).
    public enum Error: Swift.Error, Sendable, Hashable, CustomStringConvertible {
        /// QEMU answered the command with `{"error": {"class": …, "desc": …}}`.
        case commandFailed(class: String, desc: String)
        /// The socket closed (or QEMU died) before the reply arrived, or the client is closed.
        case disconnected
        /// No reply within the command's deadline (or no greeting within the connect deadline).
        case timeout
        /// QEMU sent something that is not valid QMP; the connection is closed.
        case protocolViolation(String)
        /// The client was used in a way the protocol does not allow at this point.
        case invalidState(String)
        /// An argument cannot be sent (a socket path too long, a negative fd, …).
        case invalidArgument(String)
        /// A system call on the socket failed.
        case systemCallFailed(call: String, errno: Int32)

        public var description: String {
            switch self {
            case .commandFailed(let errorClass, let desc): "qemu refused the command: \(errorClass): \(desc)"
            case .disconnected: "qmp connection closed"
            case .timeout: "qmp command timed out"
            case .protocolViolation(let why): "qmp protocol violation: \(why)"
            case .invalidState(let why): "invalid qmp state: \(why)"
            case .invalidArgument(let why): "invalid argument: \(why)"
            case .systemCallFailed(let call, let code): "\(call) failed: errno \(code)"
            }
        }
    }

    /// An asynchronous event: `{"event": NAME, "data": {…}, "timestamp": {"seconds": S, "microseconds": U}}`.
    public struct Event: Sendable, Hashable {
        /// When QEMU emitted the event (host wall clock).
        public struct Timestamp: Sendable, Hashable {
            public var seconds: Int64
            public var microseconds: Int64

            public init(seconds: Int64, microseconds: Int64) {
                self.seconds = seconds
                self.microseconds = microseconds
            }
        }

        /// The event name, e.g. `STOP`, `RESUME`, `SHUTDOWN`, `MIGRATION`.
        public var name: String
        /// The event's `data` member; empty when QEMU sent none.
        public var data: [String: Value]
        public var timestamp: Timestamp

        public init(name: String, data: [String: Value] = [:], timestamp: Timestamp) {
            self.name = name
            self.data = data
            self.timestamp = timestamp
        }
    }

    /// The greeting QEMU sends on connect: `{"QMP": {"version": {...}, "capabilities": [...]}}`.
    public struct Greeting: Sendable, Hashable {
        /// QEMU's version triple.
        public struct Version: Sendable, Hashable, Comparable, CustomStringConvertible {
            public var major: Int
            public var minor: Int
            public var micro: Int

            public init(major: Int, minor: Int, micro: Int) {
                self.major = major
                self.minor = minor
                self.micro = micro
            }

            public static func < (lhs: Version, rhs: Version) -> Bool {
                (lhs.major, lhs.minor, lhs.micro) < (rhs.major, rhs.minor, rhs.micro)
            }

            public var description: String { "\(major).\(minor).\(micro)" }
        }

        public var version: Version
        /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18+b3`.
        public var package: String
        /// Capabilities QEMU offers (`oob`); Keel negotiates none of them.
        public var capabilities: [String]

        public init(version: Version, package: String = "", capabilities: [String]) {
            self.version = version
            self.package = package
            self.capabilities = capabilities
        }
    }
}
