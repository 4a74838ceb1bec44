import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// A request as the API's handlers see it: the whole body is in memory (at most
/// `JSONBody.maximumRequestSize` bytes, enforced before a handler runs).
struct APIRequest: Sendable {
    var method: HTTPMethod
    /// The path, percent-decoded per segment, without the query.
    var path: String
    var query: [String: String]
    var headers: HTTPHeaders
    var body: ByteBuffer
    /// The values of the route's `{…}` segments.
    var parameters: [String: String]
    /// The connection, to notice a client that hangs up on a long answer.
    let channel: any Channel

    /// A query parameter, percent-decoded.
    func query(_ key: String) -> String? { query[key] }
}

/// A response: a whole body, or one written piece by piece (chunked) by a task.
struct APIResponse: Sendable {
    enum Body: Sendable {
        case bytes(ByteBuffer)
        /// Written by the closure until it returns; the connection's next request waits.
        case stream(@Sendable (APIStreamWriter) async throws -> Void)
    }

    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: Body
}

/// Writes the pieces of a streamed response; each write waits until the socket took it, so a
/// slow reader slows its writer (the event bus drops for it; no job waits).
struct APIStreamWriter: Sendable {
    let channel: any Channel

    func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer))).get()
    }
}

/// One endpoint of the API: its method, its path pattern (`/v1/domains/{name}`) and how it is
/// answered.
struct Endpoint: Sendable {
    enum Handler: Sendable {
        /// Answered on the connection's event loop, without a hop to another thread: quick reads
        /// of the state directory (small files in the page cache) and of `/proc`, never a wait.
        case inline(@Sendable (API, APIRequest) throws -> APIResponse)
        /// Run as a task: jobs and anything that may wait (QEMU, locks, peers).
        case task(@Sendable (API, APIRequest) async throws -> APIResponse)
    }

    var method: HTTPMethod
    var path: String
    var handler: Handler

    static func inline(_ method: HTTPMethod, _ path: String, _ body: @escaping @Sendable (API, APIRequest) throws -> APIResponse) -> Endpoint {
        Endpoint(method: method, path: path, handler: .inline(body))
    }

    static func task(_ method: HTTPMethod, _ path: String, _ body: @escaping @Sendable (API, APIRequest) async throws -> APIResponse) -> Endpoint {
        Endpoint(method: method, path: path, handler: .task(body))
    }
}

/// The API's routes by path pattern and method; tells a wrong method (405) from an unknown
/// path (404).
struct RouteTable: Sendable {
    enum Match {
        case found(Endpoint.Handler, parameters: [String: String])
        case methodNotAllowed(allowed: [String])
        case notFound
    }

    private var entries: [(pattern: [String], endpoints: [Endpoint])] = []

    init(_ endpoints: [Endpoint]) {
        for endpoint in endpoints {
            let parts = Self.components(endpoint.path)
            if let index = entries.firstIndex(where: { $0.pattern == parts }) {
                entries[index].endpoints.append(endpoint)
            } else {
                entries.append((parts, [endpoint]))
            }
        }
    }

    func match(_ method: HTTPMethod, segments: [String]) -> Match {
        guard let entry = entries.first(where: { Self.matches($0.pattern, segments) }) else { return .notFound }
        guard let endpoint = entry.endpoints.first(where: { $0.method == method }) else {
            return .methodNotAllowed(allowed: entry.endpoints.map(\.method.rawValue))
        }
        var parameters: [String: String] = [:]
        for (part, segment) in zip(entry.pattern, segments) where part.hasPrefix("{") {
            parameters[String(part.dropFirst().dropLast())] = segment
        }
        return .found(endpoint.handler, parameters: parameters)
    }

    /// The methods allowed on a concrete path, empty when no pattern matches it.
    func methods(forPath path: String) -> [String] {
        let parts = Self.components(path)
        return entries.first { Self.matches($0.pattern, parts) }?.endpoints.map(\.method.rawValue) ?? []
    }

    private static func matches(_ pattern: [String], _ segments: [String]) -> Bool {
        pattern.count == segments.count && zip(pattern, segments).allSatisfy { $0.hasPrefix("{") || $0 == $1 }
    }

    private static func components(_ path: String) -> [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
    }
}

/// The API's HTTP/1.1 server on the control socket, on SwiftNIO's HTTP codec directly.
///
/// Queries are answered on the event loop that read them; jobs run as tasks and their answers
/// are written back on that loop. Keep-alive and pipelined requests are answered in order.
/// Every request's peer is checked (`SO_PEERCRED`, once per connection) before it is routed.
/// On graceful shutdown the socket stops accepting, requests in progress finish, and idle
/// connections close.
struct APIServer: Service {
    let api: API
    let socket: ControlSocket
    /// A listening socket passed by systemd (socket activation), served instead of binding
    /// `socket.path`.
    let inherited: Int32?
    let logger: Logger
    /// Runs once the socket is bound and listening.
    let onRunning: @Sendable () -> Void

    /// The nice value of the event-loop threads (see `raisePriority`).
    static let loopNice: Int32 = -5

    func run() async throws {
        let connections = ConnectionRegistry()
        let core = APIServerCore(api: api, socket: socket, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        do {
            for loop in group.makeIterator() {
                if let error = try await loop.submit({ Self.raisePriority(nice: Self.loopNice) }).get() {
                    logger.debug("the API's threads keep their priority", metadata: ["error": "\(error)"])
                }
            }
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(APIConnectionHandler(core: core))
                        connections.add(channel)
                    }
                }
            let server = try await (inherited.map { bootstrap.withBoundSocket($0) } ?? bootstrap.bind(unixDomainSocketPath: socket.path)).get()
            onRunning()
            try await withGracefulShutdownHandler {
                try await server.closeFuture.get()
            } onGracefulShutdown: {
                server.close(promise: nil)
            }
            await connections.drain()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
    }
}

extension APIServer {
    /// Gives the calling thread (an event loop of the API) a higher priority, so that queries
    /// are answered while jobs, QEMU and its guests keep the CPUs busy: measured with 20 guests
    /// and 200 requests in flight of which a quarter are suspend/resume jobs, dominfo's p99 is
    /// several times lower. Queries are short; under CFS nice -5 weighs three times nice 0, a
    /// share, not a monopoly, so guests are not starved by a flood of queries.
    ///
    /// `SCHED_RESET_ON_FORK` keeps the raise to this thread: a thread or process created from it
    /// starts at nice 0, so no QEMU and no worker thread inherits it.
    ///
    /// - Returns: why not, when not allowed (keeld not run by root): the thread keeps its priority.
    static func raisePriority(nice: Int32) -> String? {
        var parameters = sched_param(sched_priority: 0)
        // SCHED_RESET_ON_FORK (0x40000000) is not imported from Glibc.
        guard sched_setscheduler(0, SCHED_OTHER | 0x4000_0000, &parameters) == 0,
              setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) == 0
        else { return String(cString: strerror(errno)) }
        return nil
    }
}

/// What every connection handler shares.
struct APIServerCore: Sendable {
    let api: API
    let socket: ControlSocket
    let logger: Logger
    let routes = API.routes

    /// The API's JSON answer for any error a handler threw.
    func errorResponse(_ error: any Error, method: HTTPMethod, path: String) -> APIResponse {
        let apiError = APIError(error)
        logger.debug("request failed", metadata: [
            "method": "\(method.rawValue)", "path": "\(path)", "status": "\(apiError.status.code)", "code": "\(apiError.code)",
        ])
        var response = (try? JSONBody.response(apiError.body, status: apiError.status))
            ?? JSONBody.text("{\"error\":{\"code\":\"internal\",\"message\":\"cannot encode an error\"}}\n", contentType: "application/json", status: .internalServerError)
        response.headers.add(contentsOf: apiError.headers)
        return response
    }

    /// Why a peer may not use the API, or nil when it may.
    func refusal(of credentials: Result<(pid: pid_t, uid: uid_t, gid: gid_t), any Error>) -> APIError? {
        switch credentials {
        case .failure(let error):
            return APIError(status: .forbidden, code: "forbidden", message: "cannot read the peer's credentials: \(error)")
        case .success(let peer):
            guard socket.allows(uid: peer.uid, gid: peer.gid, pid: peer.pid) else {
                logger.warning("refused a peer", metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)"])
                return APIError(status: .forbidden, code: "forbidden", message: "uid \(peer.uid) may not use keeld (root\(socket.group.map { " or group \($0.name)" } ?? "") only)")
            }
            return nil
        }
    }
}

/// The server's open connections, so that a graceful shutdown can close them once idle.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLockedValue { $0[id] = channel }
        channel.closeFuture.whenComplete { [channels] _ in
            _ = channels.withLockedValue { $0.removeValue(forKey: id) }
        }
    }

    /// Asks every connection to close once its request in progress is answered, and waits.
    func drain() async {
        let open = channels.withLockedValue { Array($0.values) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(APIConnectionHandler.Drain())
        }
        for channel in open {
            try? await channel.closeFuture.get()
        }
    }
}

/// One connection: collects each request, checks the peer, routes, answers.
final class APIConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The user event that asks the connection to close once idle.
    struct Drain: Sendable {}

    /// Whether the peer may use the API; its credentials are fixed when it connects, so this
    /// is decided once per connection.
    private enum PeerVerdict {
        case unknown
        case allowed
        case refused(APIError)
    }

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer)
        /// The request was refused before its body was read; the rest of it is dropped.
        case discarding
        case responding
    }

    private let core: APIServerCore
    private var state = State.idle
    private var context: ChannelHandlerContext?
    /// The peer's credentials, read when the connection becomes active.
    private var credentials: EventLoopFuture<(pid: pid_t, uid: uid_t, gid: gid_t)>?
    private var verdict = PeerVerdict.unknown
    private var draining = false

    init(core: APIServerCore) {
        self.core = core
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { readCredentials(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        readCredentials(context)
        context.fireChannelActive()
    }

    private func readCredentials(_ context: ChannelHandlerContext) {
        guard credentials == nil else { return }
        // `struct ucred { pid_t pid; uid_t uid; gid_t gid; }` (Linux); Glibc only declares it
        // under _GNU_SOURCE, and a tuple has the same C layout.
        if let provider = context.channel as? any SocketOptionProvider {
            credentials = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        } else {
            credentials = context.eventLoop.makeFailedFuture(APIError(status: .forbidden, code: "forbidden", message: "peer credentials are not available on this connection"))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Drain {
            // A request being answered finishes first; a connection idle or still sending its
            // request closes now.
            draining = true
            if case .responding = state { return }
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            let limit = JSONBody.maximumRequestSize
            if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > limit {
                refuseBody(context, head, JSONBody.tooLarge("request body of \(length) bytes exceeds the limit of \(limit) bytes"))
                return
            }
            state = .receiving(head, context.channel.allocator.buffer(capacity: 0))
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                // curl asks before sending a body over 1 KiB, and waits a second for the answer.
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
            }
        case .body(var chunk):
            guard case .receiving(let head, var body) = state else { return }
            let limit = JSONBody.maximumRequestSize
            if body.readableBytes + chunk.readableBytes > limit {
                refuseBody(context, head, JSONBody.tooLarge("request body exceeds the limit of \(limit) bytes"))
                return
            }
            state = .responding  // drops the state's reference, so the append does not copy
            body.writeBuffer(&chunk)
            state = .receiving(head, body)
        case .end:
            guard case .receiving(let head, let body) = state else { return }
            state = .responding
            if credentials == nil { readCredentials(context) }
            credentials?.assumeIsolated().whenComplete { [self] result in
                if case .unknown = verdict {
                    verdict = core.refusal(of: result.map { $0 }).map(PeerVerdict.refused) ?? .allowed
                }
                guard let context = self.context else { return }
                if case .refused(let error) = verdict {
                    let (path, _) = Self.split(head.uri)
                    finish(context, core.errorResponse(error, method: head.method, path: path), keepAlive: head.isKeepAlive)
                } else {
                    dispatch(context, head, body)
                }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Answers an oversized request at once and closes the connection shortly after: the rest
    /// of the body is never used, and a client still sending must not wait for a reader.
    private func refuseBody(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ error: APIError) {
        state = .discarding
        let (path, _) = Self.split(head.uri)
        write(context, core.errorResponse(error, method: head.method, path: path), keepAlive: false)
        let channel = context.channel
        channel.eventLoop.scheduleTask(in: .milliseconds(100)) { channel.close(promise: nil) }
    }

    private func dispatch(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ body: ByteBuffer) {
        let (path, query) = Self.split(head.uri)
        let keepAlive = head.isKeepAlive
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map { Self.percentDecoded($0, plusIsSpace: false) }
        switch core.routes.match(head.method, segments: segments) {
        case .notFound:
            let error = APIError(status: .notFound, code: "not-found", message: "no such endpoint: \(head.method.rawValue) \(path)")
            finish(context, core.errorResponse(error, method: head.method, path: path), keepAlive: keepAlive)
        case .methodNotAllowed(let allowed):
            let error = APIError(
                status: .methodNotAllowed, code: "method-not-allowed",
                message: "\(head.method.rawValue) is not allowed on \(path) (allowed: \(allowed.joined(separator: ", ")))",
                headers: ["allow": allowed.joined(separator: ", ")]
            )
            finish(context, core.errorResponse(error, method: head.method, path: path), keepAlive: keepAlive)
        case .found(let handler, let parameters):
            let request = APIRequest(
                method: head.method, path: "/" + segments.joined(separator: "/"), query: query, headers: head.headers,
                body: body, parameters: parameters, channel: context.channel
            )
            switch handler {
            case .inline(let body):
                let response: APIResponse
                do {
                    response = try body(core.api, request)
                } catch {
                    response = core.errorResponse(error, method: head.method, path: path)
                }
                finish(context, response, keepAlive: keepAlive)
            case .task(let body):
                let core = self.core
                let loop = context.eventLoop
                let handler = NIOLoopBound(self, eventLoop: loop)
                Task {
                    let response: APIResponse
                    do {
                        response = try await body(core.api, request)
                    } catch {
                        response = core.errorResponse(error, method: request.method, path: path)
                    }
                    loop.execute {
                        let handler = handler.value
                        guard let context = handler.context else { return }
                        handler.finish(context, response, keepAlive: keepAlive)
                    }
                }
            }
        }
    }

    /// Writes a response, then reads the next request or closes.
    private func finish(_ context: ChannelHandlerContext, _ response: APIResponse, keepAlive: Bool) {
        let keepAlive = keepAlive && !draining
        switch response.body {
        case .bytes:
            write(context, response, keepAlive: keepAlive)
            completed(context, keepAlive: keepAlive)
        case .stream(let produce):
            var head = HTTPResponseHead(version: .http1_1, status: response.status, headers: response.headers)
            if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
            context.writeAndFlush(wrapOutboundOut(.head(head)), promise: nil)
            let writer = APIStreamWriter(channel: context.channel)
            let loop = context.eventLoop
            let handler = NIOLoopBound(self, eventLoop: loop)
            Task {
                try? await produce(writer)
                loop.execute {
                    let handler = handler.value
                    guard let context = handler.context else { return }
                    context.writeAndFlush(handler.wrapOutboundOut(.end(nil)), promise: nil)
                    handler.completed(context, keepAlive: keepAlive && !handler.draining)
                }
            }
        }
    }

    private func completed(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            state = .idle
        } else {
            context.close(promise: nil)
        }
    }

    private func write(_ context: ChannelHandlerContext, _ response: APIResponse, keepAlive: Bool) {
        guard case .bytes(let body) = response.body else { return }
        var head = HTTPResponseHead(version: .http1_1, status: response.status, headers: response.headers)
        head.headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// The path and the query parameters of a request target.
    static func split(_ uri: String) -> (path: String, query: [String: String]) {
        guard let mark = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: mark)...].split(separator: "&", omittingEmptySubsequences: true) {
            if let equals = pair.firstIndex(of: "=") {
                query[percentDecoded(pair[..<equals])] = percentDecoded(pair[pair.index(after: equals)...])
            } else {
                query[percentDecoded(pair)] = ""
            }
        }
        return (String(uri[..<mark]), query)
    }

    /// `%XX` decoded (and in a query `+` as a space, as forms encode it); a malformed escape
    /// stays as it is.
    static func percentDecoded(_ text: Substring, plusIsSpace: Bool = true) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "%") || (plusIsSpace && $0 == UInt8(ascii: "+")) }) else { return String(text) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if plusIsSpace && byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                      let high = hexValue(iterator[iterator.startIndex]), let low = hexValue(iterator[iterator.startIndex + 1]) {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
