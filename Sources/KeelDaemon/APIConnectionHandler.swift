import Glibc
import NIOCore
import NIOHTTP1

/// One connection: collects each request, routes it, answers.
final class APIConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The user event that asks the connection to close once idle.
    struct Drain: Sendable {}

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer)
        /// A request is being answered (by the loop or a task).
        case responding
        /// A streamed answer is being written.
        case streaming
        /// The connection closes: whatever else arrives is dropped (also requests pipelined
        /// behind one answered with `connection: close`).
        case closing
    }

    /// Whether the peer may use the API; its credentials are fixed when it connects, so this is
    /// decided then, once.
    private enum PeerVerdict {
        case unknown
        case allowed
        case refused(APIError)
    }

    private let core: APIServerCore
    private var state = State.idle
    private var context: ChannelHandlerContext?
    /// The peer's credentials, read when the connection becomes active.
    private var credentials: EventLoopFuture<(pid: pid_t, uid: uid_t, gid: gid_t)>?
    private var verdict = PeerVerdict.unknown
    private var draining = false
    /// A request read while the connection could not take more output: answered once it can,
    /// so that a client that pipelines and never reads cannot make keeld queue answers without
    /// bound (NIO's pipelining handler reads no further meanwhile).
    private var held: (HTTPRequestHead, ByteBuffer)?
    /// The write of the last response's end, to close after it when the connection drains.
    private var lastEnd: EventLoopFuture<Void>?

    /// How long a connection that is closing may take to hand over what it was sent (a client
    /// that stopped reading a large answer, or is still sending a refused body).
    static let closeGrace: TimeAmount = .seconds(5)

    init(core: APIServerCore) {
        self.core = core
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { judgePeer(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        judgePeer(context)
        context.fireChannelActive()
    }

    /// Reads the peer's credentials (`SO_PEERCRED`, fixed at connect) and decides; on the loop
    /// NIO reads them at once, so the verdict is known before any request is read.
    private func judgePeer(_ context: ChannelHandlerContext) {
        guard credentials == nil else { return }
        // `struct ucred { pid_t pid; uid_t uid; gid_t gid; }` (Linux); Glibc only declares it
        // under _GNU_SOURCE, and a tuple has the same C layout.
        let future: EventLoopFuture<(pid: pid_t, uid: uid_t, gid: gid_t)>
        if let provider = context.channel as? any SocketOptionProvider {
            future = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        } else {
            future = context.eventLoop.makeFailedFuture(APIError(status: .forbidden, code: "forbidden", message: "peer credentials are not available on this connection"))
        }
        credentials = future
        future.assumeIsolated().whenComplete { [self] result in
            if case .unknown = verdict {
                verdict = core.refusal(of: result.map { $0 }).map(PeerVerdict.refused) ?? .allowed
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Drain {
            // A request being answered finishes first; a connection still sending its request,
            // following events or holding an unanswered request closes now; one that is idle or
            // closing closes once its last answer is out, or after a grace.
            draining = true
            switch state {
            case .responding where held == nil:
                return
            case .responding, .receiving, .streaming:
                context.close(promise: nil)
            case .idle:
                let channel = context.channel
                if let lastEnd {
                    lastEnd.whenComplete { _ in channel.close(promise: nil) }
                    closeAfterGrace(channel)
                } else {
                    channel.close(promise: nil)
                }
            case .closing:
                closeAfterGrace(context.channel)
            }
            return
        }
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            // Nothing read for minutes: a connection waiting for a request, stuck in one, or
            // closing goes; one whose job or event stream is still answering stays.
            switch state {
            case .idle, .receiving, .closing: context.close(promise: nil)
            case .responding, .streaming: break
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let (head, body) = held {
            held = nil
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.answer(head, body) }
        }
        context.fireChannelWritabilityChanged()
    }

    private func closeAfterGrace(_ channel: any Channel) {
        channel.eventLoop.scheduleTask(in: Self.closeGrace) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard case .idle = state else { return }
            if case .refused(let error) = verdict {
                refuse(context, head, error)
                return
            }
            let limit = JSONBody.maximumRequestSize
            if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > limit {
                refuse(context, head, JSONBody.tooLarge("request body of \(length) bytes exceeds the limit of \(limit) bytes"))
                return
            }
            state = .receiving(head, context.channel.allocator.buffer(capacity: 0))
            if head.version.minor >= 1, case .allowed = verdict,
               head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                // curl asks before sending a body over 1 KiB, and waits a second for the answer.
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
            }
        case .body(var chunk):
            guard case .receiving(let head, var body) = state else { return }
            let limit = JSONBody.maximumRequestSize
            if body.readableBytes + chunk.readableBytes > limit {
                refuse(context, head, JSONBody.tooLarge("request body exceeds the limit of \(limit) bytes"))
                return
            }
            state = .responding  // drops the state's reference, so the append does not copy
            body.writeBuffer(&chunk)
            state = .receiving(head, body)
        case .end:
            guard case .receiving(let head, let body) = state else { return }
            state = .responding
            guard context.channel.isWritable else {
                held = (head, body)
                return
            }
            // Answered in a turn of its own: writing an answer's end makes NIO's pipelining
            // handler deliver the next pipelined request at once, and answering that one inside
            // this call would nest one call per request in the batch.
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { handler.value.answer(head, body) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Answers at once and closes the connection shortly after: a refused peer's request, or
    /// an oversized one whose body is never used (a client still sending it must not wait for
    /// a reader). Everything else on the connection is dropped.
    private func refuse(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ error: APIError) {
        state = .closing
        let (path, _) = Self.split(head.uri)
        let response = core.errorResponse(error, method: head.method, path: path)
        guard case .bytes(let body) = response.body else { return }
        writeHead(context, response, contentLength: body.readableBytes, keepAlive: false)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        // Half-closed once the answer is out: a client still sending its body can finish and
        // read the answer (a full close would fail its writes with EPIPE first); whatever it
        // sends is read and dropped until it closes, or the grace ends.
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(mode: .output, promise: nil) }
        closeAfterGrace(channel)
    }

    private func answer(_ head: HTTPRequestHead, _ body: ByteBuffer) {
        guard let context else { return }
        switch verdict {
        case .allowed:
            dispatch(context, head, body)
        case .refused(let error):
            refuse(context, head, error)
        case .unknown:
            // Not seen (NIO reads the credentials on the loop at once); decided when they come.
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            credentials?.assumeIsolated().whenComplete { _ in handler.value.answer(head, body) }
        }
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
                core.connections.taskStarted()
                Task {
                    defer { core.connections.taskEnded() }
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
        case .bytes(let body):
            writeHead(context, response, contentLength: body.readableBytes, keepAlive: keepAlive)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            end(context, keepAlive: keepAlive)
        case .stream(let produce):
            state = .streaming
            writeHead(context, response, contentLength: nil, keepAlive: keepAlive)
            context.flush()
            let writer = APIStreamWriter(channel: context.channel)
            let loop = context.eventLoop
            let handler = NIOLoopBound(self, eventLoop: loop)
            let connections = core.connections
            connections.taskStarted()
            Task {
                defer { connections.taskEnded() }
                try? await produce(writer)
                loop.execute {
                    let handler = handler.value
                    guard let context = handler.context, case .streaming = handler.state else { return }
                    handler.end(context, keepAlive: keepAlive && !handler.draining)
                }
            }
        }
    }

    /// Ends the response. The state changes first: writing the end lets NIO's pipelining
    /// handler deliver the next request at once, which must find the connection idle — or
    /// closing, when this response said so.
    private func end(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            state = .idle
            lastEnd = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        } else {
            state = .closing
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            if draining { closeAfterGrace(channel) }
        }
    }

    private func writeHead(_ context: ChannelHandlerContext, _ response: APIResponse, contentLength: Int?, keepAlive: Bool) {
        var head = HTTPResponseHead(version: .http1_1, status: response.status, headers: response.headers)
        if let contentLength { head.headers.replaceOrAdd(name: "content-length", value: String(contentLength)) }
        if !keepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
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
