#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension QMP {
    /// A QMP client on QEMU's monitor socket (`-qmp unix:PATH,server=on,wait=off`).
    ///
    /// Obtained only through ``withConnection(to:deadline:commandDeadline:isolation:_:)``, which
    /// negotiates capabilities first and closes the socket when the body returns. Commands may
    /// be issued concurrently from several tasks; replies are matched by id. When the socket
    /// closes (QEMU quit or died) every pending command fails at once with
    /// ``QMP/Error/disconnected``.
    public final class Client: Sendable {
        /// QEMU's greeting: its version and offered capabilities.
        public let greeting: Greeting
        /// The deadline of a command that names none.
        public let commandDeadline: Duration
        /// Asynchronous events in arrival order; finishes when the connection closes. Single
        /// consumer. Up to 4096 unread events are kept, older ones dropped first.
        public var events: AsyncStream<Event> { transport.events }

        let transport: Transport

        private init(transport: Transport, greeting: Greeting, commandDeadline: Duration) {
            self.transport = transport
            self.greeting = greeting
            self.commandDeadline = commandDeadline
        }

        /// Connects to QEMU's QMP socket, negotiates capabilities, runs `body`, then closes.
        ///
        /// A socket that does not exist yet or refuses connections is retried until `deadline`,
        /// so this can be called right after spawning QEMU.
        ///
        /// - Parameters:
        ///   - path: the Unix socket path.
        ///   - deadline: how long connecting and negotiating may take.
        ///   - commandDeadline: the default per-command deadline.
        ///   - body: the work to do with the connected client. The client must not be used
        ///     after `body` returns; it then fails every call with ``QMP/Error/disconnected``.
        /// - Throws: ``QMP/Error`` from connecting or negotiating, or whatever `body` throws.
        public static func withConnection<Result>(
            to path: String,
            deadline: Duration = .seconds(10),
            commandDeadline: Duration = .seconds(60),
            isolation: isolated (any Actor)? = #isolation,
            _ body: (Client) async throws -> Result
        ) async throws -> Result {
            let client = try await connect(to: path, deadline: deadline, commandDeadline: commandDeadline)
            let result: Result
            do {
                result = try await body(client)
            } catch {
                await client.transport.shutdown()
                throw error
            }
            await client.transport.shutdown()
            return result
        }

        private static func connect(to path: String, deadline: Duration, commandDeadline: Duration) async throws -> Client {
            let limit = ContinuousClock.now + deadline
            var fd: Int32 = -1
            while fd < 0 {
                do {
                    fd = try UnixSocket.connected(to: path)
                } catch {
                    // QEMU creates and listens on the socket shortly after it starts.
                    guard case .systemCallFailed(_, let code) = error, code == ENOENT || code == ECONNREFUSED,
                          ContinuousClock.now < limit
                    else { throw error }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            let transport = Transport(fd: fd)
            transport.start()
            do {
                let greeting = try await transport.negotiate(deadline: limit)
                return Client(transport: transport, greeting: greeting, commandDeadline: commandDeadline)
            } catch {
                await transport.shutdown()
                throw error
            }
        }

        /// Whether the socket is still open and usable.
        public var isConnected: Bool { transport.isConnected }

        /// Executes a command and returns its `return` value.
        ///
        /// - Parameters:
        ///   - command: the command name, e.g. `query-status`.
        ///   - arguments: the `arguments` object, omitted when nil.
        ///   - deadline: how long to wait for the reply; ``commandDeadline`` when nil.
        /// - Throws: ``QMP/Error/commandFailed(class:desc:)`` when QEMU refuses,
        ///   ``QMP/Error/timeout``, ``QMP/Error/disconnected``, `CancellationError`.
        @discardableResult
        public func execute(_ command: String, arguments: [String: Value]? = nil, deadline: Duration? = nil) async throws -> Value {
            try await transport.execute(command, arguments: arguments, fileDescriptors: [], deadline: deadline ?? commandDeadline)
        }

        /// Executes a command with file descriptors attached (SCM_RIGHTS on the same `sendmsg`
        /// as the command, as `getfd` and `add-fd` expect). QEMU receives duplicates; the
        /// caller still owns and closes `fileDescriptors`.
        ///
        /// - Throws: as ``execute(_:arguments:deadline:)``, and `.invalidArgument` for a
        ///   negative descriptor.
        @discardableResult
        public func execute(_ command: String, arguments: [String: Value]? = nil, fileDescriptors: [Int32], deadline: Duration? = nil) async throws -> Value {
            guard fileDescriptors.allSatisfy({ $0 >= 0 }) else {
                throw QMP.Error.invalidArgument("negative file descriptor in \(fileDescriptors)")
            }
            // Linux refuses more than SCM_MAX_FD (253) descriptors in one message.
            guard fileDescriptors.count <= 253 else {
                throw QMP.Error.invalidArgument("at most 253 file descriptors per command")
            }
            return try await transport.execute(command, arguments: arguments, fileDescriptors: fileDescriptors, deadline: deadline ?? commandDeadline)
        }
    }
}
