#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A small blocking HTTP/1.1 client over a Unix stream socket: one request per connection
/// (`Connection: close`), replies framed by `Content-Length`, chunked coding or the end of the
/// connection, every wait bounded by a deadline. Blocking on purpose: a CLI command does one
/// thing at a time, and callers that must not block a task run it on a thread of their own.
public struct UnixHTTPClient: Sendable {
    /// One request.
    public struct Request: Sendable {
        public var method: String
        /// The path and query (`/v1/domains/web/xml?inactive=true`).
        public var target: String
        public var body: [UInt8]?
        public var contentType: String?

        public init(method: String, target: String, body: [UInt8]? = nil, contentType: String? = "application/json") {
            self.method = method
            self.target = target
            self.body = body
            self.contentType = contentType
        }

        /// "GET /v1/domains", for messages.
        public var summary: String { "\(method) \(target)" }

        var bytes: [UInt8] {
            var head = "\(method) \(target) HTTP/1.1\r\nHost: keeld\r\nUser-Agent: keel\r\nConnection: close\r\n"
            if let body {
                if let contentType { head += "Content-Type: \(contentType)\r\n" }
                head += "Content-Length: \(body.count)\r\n"
            }
            head += "\r\n"
            return Array(head.utf8) + (body ?? [])
        }
    }

    /// A whole response.
    public struct Response: Sendable {
        public var head: HTTPResponseParser.Head
        public var body: [UInt8]

        public var status: Int { head.status }
    }

    /// How a streamed response ended.
    public enum StreamEnd: Sendable, Equatable {
        /// The body ended (the server finished it).
        case finished
        /// The body handler asked to stop.
        case stopped
        /// The deadline passed while the stream was open.
        case deadline
    }

    /// The largest body `send` accepts.
    public static let maximumBodySize = 64 << 20

    public let socketPath: String

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// Sends `request` and reads the whole response.
    ///
    /// - Parameter timeout: how long the whole exchange may take.
    /// - Throws: `ClientError` for a missing socket, a refused or closed connection, a reply
    ///   that is not HTTP, a body over `maximumBodySize`, or the timeout.
    public func send(_ request: Request, timeout: Duration) throws(ClientError) -> Response {
        let deadline = ContinuousClock.now + timeout
        var head: HTTPResponseParser.Head?
        var body: [UInt8] = []
        let end = try exchange(request, deadline: deadline, timeoutIsError: true, timeout: timeout) { event throws(ClientError) -> Bool in
            switch event {
            case .head(let value):
                head = value
            case .body(let bytes):
                body.append(contentsOf: bytes)
                if body.count > Self.maximumBodySize {
                    throw ClientError(.protocolViolation, "keeld's answer to \(request.summary) exceeds \(Self.maximumBodySize >> 20) MiB")
                }
            case .end:
                break
            }
            return true
        }
        guard end == .finished, let head else {
            throw ClientError(.connectionClosed, "keeld closed the connection before answering \(request.summary)")
        }
        return Response(head: head, body: body)
    }

    /// Sends `request` and hands the response to `handler` as it arrives: the head, then each
    /// piece of body, then the end. Returns when the body ends, when `handler` returns false, or
    /// at `deadline`.
    ///
    /// - Throws: `ClientError` as `send`, except that reaching `deadline` is `.deadline`.
    public func stream(
        _ request: Request, deadline: ContinuousClock.Instant?, _ handler: (HTTPResponseParser.Event) throws(ClientError) -> Bool
    ) throws(ClientError) -> StreamEnd {
        try exchange(request, deadline: deadline, timeoutIsError: false, timeout: nil, handler)
    }

    // MARK: the exchange

    private func exchange(
        _ request: Request, deadline: ContinuousClock.Instant?, timeoutIsError: Bool, timeout: Duration?,
        _ handler: (HTTPResponseParser.Event) throws(ClientError) -> Bool
    ) throws(ClientError) -> StreamEnd {
        let fd = try connect()
        defer { close(fd) }
        func expired() throws(ClientError) -> StreamEnd {
            if timeoutIsError {
                throw ClientError(.timeout, "keeld did not answer \(request.summary) within \(Self.seconds(timeout ?? .zero))")
            }
            return .deadline
        }

        // A server refusing the request may stop reading it; its answer is still read below.
        let outgoing = request.bytes
        var offset = 0
        while offset < outgoing.count {
            let sent = outgoing.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress.map { $0 + offset }, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if sent > 0 {
                offset += sent
                continue
            }
            let code = errno
            if code == EINTR { continue }
            if code == EAGAIN || code == EWOULDBLOCK {
                if try !wait(fd, for: Int16(POLLOUT), until: deadline) { return try expired() }
                continue
            }
            // EPIPE or ECONNRESET: the server stopped reading; whatever it answered is read next.
            break
        }

        var parser = HTTPResponseParser(requestMethod: request.method)
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if try !wait(fd, for: Int16(POLLIN), until: deadline) { return try expired() }
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 {
                let code = errno
                if code == EINTR || code == EAGAIN || code == EWOULDBLOCK { continue }
                if code == ECONNRESET {
                    throw ClientError(.connectionClosed, closedMessage(request, answered: parser.hasHead))
                }
                throw ClientError(.io, "cannot read keeld's answer to \(request.summary): \(Self.errorText(code))")
            }
            let events: [HTTPResponseParser.Event]
            do {
                events = count == 0 ? try parser.finish() : try parser.feed(chunk[0..<count])
            } catch {
                if count == 0 {
                    throw ClientError(.connectionClosed, closedMessage(request, answered: parser.hasHead))
                }
                throw ClientError(.protocolViolation, "keeld answered \(request.summary) with something that is not HTTP/1.1: \(error.description)")
            }
            for event in events {
                if try !handler(event) { return .stopped }
                if event == .end { return .finished }
            }
        }
    }

    private func closedMessage(_ request: Request, answered: Bool) -> String {
        answered
            ? "keeld closed the connection in the middle of its answer to \(request.summary) (did it stop?)"
            : "keeld closed the connection before answering \(request.summary) (did it stop?)"
    }

    /// A connected, non-blocking socket.
    private func connect() throws(ClientError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        let pathBytes = Array(socketPath.utf8)
        guard !pathBytes.isEmpty, pathBytes.count < capacity, !pathBytes.contains(0) else {
            throw ClientError(.io, "cannot connect to keeld: the socket path must be 1 to \(capacity - 1) bytes: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in raw.copyBytes(from: pathBytes) }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError(.io, "cannot create a socket: \(Self.errorText(errno))") }
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if result != 0 {
            let code = errno
            close(fd)
            switch code {
            case ENOENT, ENOTDIR:
                throw ClientError(.socketMissing, "cannot connect to keeld: no socket at \(socketPath) (is keeld running?)")
            case ECONNREFUSED:
                throw ClientError(.connectionRefused, "cannot connect to keeld at \(socketPath): connection refused (is keeld running, or is the socket stale?)")
            case EACCES, EPERM:
                throw ClientError(.permissionDenied, "cannot connect to keeld at \(socketPath): permission denied (the socket is for root and keeld's --group)")
            default:
                throw ClientError(.io, "cannot connect to keeld at \(socketPath): \(Self.errorText(code))")
            }
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        return fd
    }

    /// Waits until `fd` is ready for `events`; false when `deadline` passed first.
    private func wait(_ fd: Int32, for events: Int16, until deadline: ContinuousClock.Instant?) throws(ClientError) -> Bool {
        while true {
            var timeoutMilliseconds: Int32 = -1
            if let deadline {
                let remaining = deadline - ContinuousClock.now
                if remaining <= .zero { return false }
                let (seconds, attoseconds) = remaining.components
                timeoutMilliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            }
            var descriptor = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&descriptor, 1, timeoutMilliseconds)
            if ready > 0 { return true }
            if ready < 0 {
                let code = errno
                if code == EINTR { continue }
                throw ClientError(.io, "cannot wait for keeld: \(Self.errorText(code))")
            }
        }
    }

    static func errorText(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// "1.5 s", "30 s".
    static func seconds(_ duration: Duration) -> String {
        let (whole, fraction) = duration.components
        let tenths = fraction / 100_000_000_000_000_000
        return tenths == 0 ? "\(whole) s" : "\(whole).\(tenths) s"
    }
}
