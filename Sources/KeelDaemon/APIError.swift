import Hummingbird
import NIOCore
import KeelCPU
import KeelQEMU

/// An error as the API reports it: an HTTP status and the body
/// `{"error": {"code": "…", "message": "…", "features": [{"name", "kind", "bits": […]}]}}`.
///
/// The code is the driver's (`not-found`, `busy`, `incompatible-cpu`, …) or one of the API's own
/// (`bad-request`, `payload-too-large`, `method-not-allowed`, `forbidden`, `internal`), so a
/// client can act on it without parsing the message; CPU refusals keep every feature with its
/// CPUID bits.
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var features: [CPUFeatureProblem] = []
    var headers: HTTPFields = [:]

    static func badRequest(_ message: String) -> APIError {
        APIError(status: .badRequest, code: "bad-request", message: message)
    }

    /// The API form of any error a handler throws.
    init(_ error: any Error) {
        switch error {
        case let error as APIError:
            self = error
        case let error as QEMUError:
            self.init(status: Self.status(for: error.code), code: error.code.rawValue, message: error.message, features: error.features)
        case let error as HTTPError:
            self.init(http: error)
        default:
            self.init(status: .internalServerError, code: "internal", message: "\(error)")
        }
    }

    init(status: HTTPResponse.Status, code: String, message: String, features: [CPUFeatureProblem] = [], headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.features = features
        self.headers = headers
    }

    private init(http error: HTTPError) {
        let message = error.body ?? error.status.reasonPhrase.lowercased()
        switch error.status {
        case .notFound: self.init(status: .notFound, code: "not-found", message: error.body ?? "no such endpoint")
        case .contentTooLarge: self.init(status: .contentTooLarge, code: "payload-too-large", message: message)
        case .badRequest: self.init(status: .badRequest, code: "bad-request", message: message)
        case .methodNotAllowed: self.init(status: .methodNotAllowed, code: "method-not-allowed", message: message)
        default: self.init(status: error.status, code: error.status.code >= 500 ? "internal" : "bad-request", message: message)
        }
    }

    /// A job stopped by an abort request.
    static let aborted = QEMUError.Code(rawValue: "aborted")

    /// The HTTP status for a driver error code.
    static func status(for code: QEMUError.Code) -> HTTPResponse.Status {
        switch code {
        case .notFound: return .notFound
        case .busy, .invalidState, .alreadyExists, Self.aborted: return .conflict
        case .incompatibleCPU: return .unprocessableContent
        case .invalidArgument, .unsupported: return .badRequest
        default: return .internalServerError
        }
    }

    var body: ErrorBody {
        ErrorBody(error: .init(code: code, message: message, features: features.isEmpty ? nil : features.map(FeatureBody.init)))
    }
}

/// The JSON body of every error response.
struct ErrorBody: Codable, Sendable {
    struct Detail: Codable, Sendable {
        var code: String
        var message: String
        var features: [FeatureBody]?
    }

    var error: Detail
}

/// One CPU feature a host cannot reproduce, with every CPUID or MSR bit behind it.
struct FeatureBody: Codable, Sendable, Equatable {
    /// One bit: where it lives and the libvirt-style text of the location.
    struct Bit: Codable, Sendable, Equatable {
        var type: String
        var leaf: UInt32?
        var subleaf: UInt32?
        var index: UInt32?
        var register: String
        var bit: Int
        var description: String
    }

    var name: String
    var kind: String
    var bits: [Bit]
    var reason: String?

    init(_ problem: CPUFeatureProblem) {
        self.init(problem, reason: nil)
    }

    init(_ problem: CPUFeatureProblem, reason: String?) {
        name = problem.name
        kind = problem.kind.rawValue
        self.reason = reason
        bits = problem.locations.flatMap { location -> [Bit] in
            switch location {
            case .cpuid(let leaf, let subleaf, let register, _):
                return location.bits.map {
                    Bit(type: "cpuid", leaf: leaf, subleaf: subleaf, register: register.rawValue, bit: $0, description: location.description)
                }
            case .msr(let index, let register, _):
                return location.bits.map {
                    Bit(type: "msr", index: index, register: register.rawValue, bit: $0, description: location.description)
                }
            }
        }
    }
}

/// Turns every error below it — handlers, the router's not-found, body limits — into the API's
/// JSON error response, so a bad request never ends a connection without an answer.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = DaemonRequestContext
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            var apiError = APIError(error)
            if apiError.status == .notFound, apiError.code == "not-found", context.endpointPath == "NotFound" {
                // The router does not distinguish an unknown path from a known path with the
                // wrong method; the route table does.
                let allowed = routes.methods(forPath: request.uri.path)
                if !allowed.isEmpty {
                    apiError = APIError(
                        status: .methodNotAllowed, code: "method-not-allowed",
                        message: "\(request.method.rawValue) is not allowed on \(request.uri.path) (allowed: \(allowed.joined(separator: ", ")))",
                        headers: [.allow: allowed.joined(separator: ", ")]
                    )
                } else {
                    apiError.message = "no such endpoint: \(request.method.rawValue) \(request.uri.path)"
                }
            }
            context.logger.debug("request failed", metadata: [
                "method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(apiError.status.code)", "code": "\(apiError.code)",
            ])
            var response = try JSONBody.response(apiError.body, status: apiError.status)
            response.headers.append(contentsOf: apiError.headers)
            if apiError.status == .contentTooLarge {
                // The rest of the body is never read: close once the answer is out, so a client
                // still sending sees the connection end instead of waiting for a reader.
                let channel = context.channel
                channel.eventLoop.scheduleTask(in: .milliseconds(100)) { channel.close(promise: nil) }
            }
            return response
        }
    }
}
