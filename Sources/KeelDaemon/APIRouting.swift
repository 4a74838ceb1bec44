import NIOCore
import NIOHTTP1

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
