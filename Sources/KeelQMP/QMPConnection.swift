extension QMP {
    /// The QMP protocol as a pure state machine: no sockets, no clocks.
    ///
    /// ```
    /// awaitingGreeting ──{"QMP":…}──▶ negotiating ──{"return":{},"id":0}──▶ ready ──close()──▶ closed
    ///                  sends qmp_capabilities       reports .ready(greeting)
    /// ```
    ///
    /// The owner feeds every line QEMU sends to ``receive(line:)`` and performs the returned
    /// ``Action``; it asks ``execute(_:arguments:)`` for the bytes of each command and gets the
    /// reply back as ``Action/reply(id:result:)`` with the same id, whatever the order of
    /// replies and events. Anything that is not valid QMP closes the connection with
    /// ``Action/close(error:pending:)``.
    public struct Connection: Sendable {
        public enum State: Sendable, Hashable {
            case awaitingGreeting
            case negotiating
            case ready
            case closed
        }

        /// What the owner must do after a message arrives.
        public enum Action: Sendable, Hashable {
            /// Write these bytes to QEMU.
            case send([UInt8])
            /// Capabilities are negotiated; commands may be executed.
            case ready(Greeting)
            /// The outcome of command `id`: its `return` value or QEMU's error as data.
            case reply(id: UInt64, result: Result<Value, QMP.Error>)
            /// An asynchronous event.
            case event(Event)
            /// The connection is unusable: fail the commands in `pending` and the negotiation
            /// (if still running) with `error`, then close the socket.
            case close(error: QMP.Error, pending: [UInt64])
        }

        /// The id of the `qmp_capabilities` command; commands count up from 1.
        static let negotiationID: UInt64 = 0

        public private(set) var state: State = .awaitingGreeting
        /// The greeting, once received.
        public private(set) var greeting: Greeting?
        /// Commands sent and not yet answered, by id, with their names.
        public private(set) var pending: [UInt64: String] = [:]
        /// Commands whose caller stopped waiting; a late reply is dropped silently.
        private var abandoned: Set<UInt64> = []
        private var nextID: UInt64 = 1

        public init() {}

        /// Whether command `id` was sent and its reply has not arrived or been abandoned.
        public func isPending(_ id: UInt64) -> Bool {
            pending[id] != nil
        }

        /// Encodes a command and records it as pending.
        ///
        /// - Parameters:
        ///   - command: the QMP command name, e.g. `query-status`.
        ///   - arguments: the `arguments` member, omitted when nil.
        /// - Returns: the id the reply will carry and the bytes to send (`\r\n`-terminated).
        /// - Throws: `.disconnected` once closed; `.invalidState` before negotiation finished.
        public mutating func execute(_ command: String, arguments: [String: Value]? = nil) throws(QMP.Error) -> (id: UInt64, bytes: [UInt8]) {
            switch state {
            case .ready: break
            case .closed: throw .disconnected
            case .awaitingGreeting, .negotiating: throw .invalidState("capabilities are not negotiated yet")
            }
            guard !command.isEmpty else { throw .invalidArgument("empty command name") }
            let id = nextID
            nextID += 1
            pending[id] = command
            return (id, Connection.encode(command, arguments: arguments, id: id))
        }

        /// Stops waiting for command `id` (its deadline passed or its caller was cancelled).
        ///
        /// - Returns: whether the command was pending.
        @discardableResult
        public mutating func abandon(_ id: UInt64) -> Bool {
            guard pending.removeValue(forKey: id) != nil else { return false }
            abandoned.insert(id)
            return true
        }

        /// Closes the connection (the socket closed, or the owner is done).
        ///
        /// - Returns: the ids of the commands still pending, which will never be answered.
        public mutating func close() -> [UInt64] {
            state = .closed
            let ids = pending.keys.sorted()
            pending.removeAll()
            abandoned.removeAll()
            return ids
        }

        /// Handles one line from QEMU (without its terminator).
        public mutating func receive(line: some Collection<UInt8>) -> Action? {
            guard state != .closed else { return nil }
            let message: Value
            do {
                message = try Value(parsing: line)
            } catch {
                return fail(error)
            }
            return receive(message)
        }

        /// Handles one decoded message from QEMU.
        public mutating func receive(_ message: Value) -> Action? {
            guard state != .closed else { return nil }
            guard case .object(let members) = message else {
                return fail(.protocolViolation("a message is not a json object"))
            }
            if let body = members["QMP"] {
                return receiveGreeting(body)
            }
            if let name = members["event"] {
                return receiveEvent(name: name, members: members)
            }
            if members["return"] != nil || members["error"] != nil {
                return receiveReply(members)
            }
            return fail(.protocolViolation("a message is neither greeting, reply nor event: \(Connection.excerpt(message))"))
        }

        private mutating func receiveGreeting(_ body: Value) -> Action? {
            guard state == .awaitingGreeting else {
                return fail(.protocolViolation("a second greeting"))
            }
            guard let qemu = body["version"]?["qemu"],
                  let major = qemu["major"]?.intValue,
                  let minor = qemu["minor"]?.intValue,
                  let micro = qemu["micro"]?.intValue
            else {
                return fail(.protocolViolation("the greeting has no version"))
            }
            let package = body["version"]?["package"]?.stringValue ?? ""
            let capabilities = body["capabilities"]?.arrayValue?.compactMap(\.stringValue) ?? []
            greeting = Greeting(version: .init(major: major, minor: minor, micro: micro), package: package, capabilities: capabilities)
            state = .negotiating
            return .send(Connection.encode("qmp_capabilities", arguments: nil, id: Connection.negotiationID))
        }

        private mutating func receiveEvent(name: Value, members: [String: Value]) -> Action? {
            guard state != .awaitingGreeting else {
                return fail(.protocolViolation("an event before the greeting"))
            }
            guard let name = name.stringValue, !name.isEmpty else {
                return fail(.protocolViolation("an event without a name"))
            }
            var data: [String: Value] = [:]
            switch members["data"] {
            case nil, .null?: break
            case .object(let object)?: data = object
            case let other?: return fail(.protocolViolation("event \(name) has non-object data \(Connection.excerpt(other))"))
            }
            let timestamp = Event.Timestamp(
                seconds: members["timestamp"]?["seconds"]?.int64Value ?? 0,
                microseconds: members["timestamp"]?["microseconds"]?.int64Value ?? 0
            )
            return .event(Event(name: name, data: data, timestamp: timestamp))
        }

        private mutating func receiveReply(_ members: [String: Value]) -> Action? {
            let result: Result<Value, QMP.Error>
            if let value = members["return"] {
                result = .success(value)
            } else if let error = members["error"],
                      let errorClass = error["class"]?.stringValue,
                      let desc = error["desc"]?.stringValue {
                result = .failure(.commandFailed(class: errorClass, desc: desc))
            } else {
                return fail(.protocolViolation("an error reply without class and desc"))
            }
            guard let id = members["id"]?.uint64Value else {
                // Keel puts an id on every command; QEMU omits it only for input it could not
                // parse, so the exchange is out of step.
                return fail(.protocolViolation("a reply without an id: \(Connection.excerpt(.object(members)))"))
            }
            switch state {
            case .awaitingGreeting:
                return fail(.protocolViolation("a reply before the greeting"))
            case .negotiating:
                guard id == Connection.negotiationID else {
                    return fail(.protocolViolation("a reply to unknown command id \(id) during negotiation"))
                }
                switch result {
                case .success:
                    guard let greeting else { return fail(.protocolViolation("negotiated without a greeting")) }
                    state = .ready
                    return .ready(greeting)
                case .failure(let error):
                    return fail(error)
                }
            case .ready:
                if pending.removeValue(forKey: id) != nil {
                    return .reply(id: id, result: result)
                }
                if abandoned.remove(id) != nil {
                    return nil
                }
                return fail(.protocolViolation("a reply to unknown command id \(id)"))
            case .closed:
                return nil
            }
        }

        private mutating func fail(_ error: QMP.Error) -> Action {
            .close(error: error, pending: close())
        }

        static func encode(_ command: String, arguments: [String: Value]?, id: UInt64) -> [UInt8] {
            var text = "{\"execute\":"
            Value.encodeString(command, into: &text)
            if let arguments {
                text += ",\"arguments\":"
                Value.object(arguments).encode(into: &text)
            }
            text += ",\"id\":\(id)}\r\n"
            return Array(text.utf8)
        }

        /// The start of a message's JSON, for error texts.
        static func excerpt(_ value: Value) -> String {
            let text = value.jsonString()
            return text.count > 200 ? String(text.prefix(200)) + "…" : text
        }
    }
}
