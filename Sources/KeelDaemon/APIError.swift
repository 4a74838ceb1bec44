import NIOHTTP1
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
    var status: HTTPResponseStatus
    var code: String
    var message: String
    var features: [CPUFeatureProblem] = []
    var headers: HTTPHeaders = [:]

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
        default:
            self.init(status: .internalServerError, code: "internal", message: "\(error)")
        }
    }

    init(status: HTTPResponseStatus, code: String, message: String, features: [CPUFeatureProblem] = [], headers: HTTPHeaders = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.features = features
        self.headers = headers
    }

    /// A job stopped by an abort request.
    static let aborted = QEMUError.Code(rawValue: "aborted")

    /// The HTTP status for a driver error code.
    static func status(for code: QEMUError.Code) -> HTTPResponseStatus {
        switch code {
        case .notFound: return .notFound
        case .busy, .invalidState, .alreadyExists, Self.aborted: return .conflict
        case .incompatibleCPU: return .unprocessableEntity
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
