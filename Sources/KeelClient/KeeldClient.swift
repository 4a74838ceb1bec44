#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// An error `keeld` answered with: the HTTP status and the API's error body
/// `{"error": {"code", "message", "features": [{"name", "kind", "bits": […]}]}}`, the CPU
/// features kept with every bit.
public struct KeeldError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String
    public var features: [WireFeature]

    public init(status: Int, code: String, message: String, features: [WireFeature] = []) {
        self.status = status
        self.code = code
        self.message = message
        self.features = features
    }

    public var description: String { message }
}

/// One CPU feature as the API carries it (the `CPUFeature` schema).
public struct WireFeature: Codable, Sendable, Equatable {
    /// One bit: where it lives and the libvirt-style text of its location.
    public struct Bit: Codable, Sendable, Equatable {
        /// `cpuid` or `msr`.
        public var type: String
        public var leaf: UInt32?
        public var subleaf: UInt32?
        public var index: UInt32?
        public var register: String
        public var bit: Int
        public var description: String
    }

    public var name: String
    /// `missing`, `extra` or `forbidden`.
    public var kind: String
    public var bits: [Bit]
    public var reason: String?
}

/// The typed side of the API: JSON requests and replies on top of `UnixHTTPClient`, daemon
/// errors decoded into `KeeldError`.
public struct KeeldClient: Sendable {
    public let http: UnixHTTPClient
    /// The deadline of an ordinary request; long jobs pass their own.
    public var timeout: Duration

    public init(socketPath: String, timeout: Duration = .seconds(120)) {
        http = UnixHTTPClient(socketPath: socketPath)
        self.timeout = timeout
    }

    public var socketPath: String { http.socketPath }

    private struct ErrorBody: Decodable {
        struct Detail: Decodable {
            var code: String
            var message: String
            var features: [WireFeature]?
        }

        var error: Detail
    }

    private struct Empty: Encodable {}

    /// Sends a request with a JSON body (or none) and decodes the JSON reply.
    ///
    /// - Parameters:
    ///   - method: the HTTP method.
    ///   - target: path and query; every variable part must already be percent-encoded.
    ///   - body: encoded as JSON; nil sends no body.
    ///   - timeout: overrides the client's deadline for this request.
    /// - Throws: `KeeldError` for an error the daemon answered, `ClientError` when it could not
    ///   answer or answered something else than the API's JSON.
    public func call<Reply: Decodable>(
        _ method: String, _ target: String, body: (any Encodable)? = nil, timeout: Duration? = nil, as type: Reply.Type = Reply.self
    ) throws -> Reply {
        var bytes: [UInt8]?
        if let body {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            bytes = Array(try encoder.encode(body))
        } else if method != "GET" && method != "DELETE" {
            bytes = Array("{}".utf8)
        }
        let request = UnixHTTPClient.Request(method: method, target: target, body: bytes)
        let response = try http.send(request, timeout: timeout ?? self.timeout)
        try Self.check(response, request)
        do {
            return try JSONDecoder().decode(Reply.self, from: Data(response.body))
        } catch {
            throw ClientError(.protocolViolation, "keeld's answer to \(request.summary) is not the expected JSON: \(Self.describe(error))")
        }
    }

    /// Throws the daemon's error for a status other than 2xx.
    public static func check(_ response: UnixHTTPClient.Response, _ request: UnixHTTPClient.Request) throws {
        guard !(200..<300).contains(response.status) else { return }
        if let body = try? JSONDecoder().decode(ErrorBody.self, from: Data(response.body)) {
            throw KeeldError(status: response.status, code: body.error.code, message: body.error.message, features: body.error.features ?? [])
        }
        let text = String(decoding: response.body.prefix(200), as: UTF8.self).replacing("\n", with: " ")
        throw ClientError(.protocolViolation, "keeld answered \(request.summary) with HTTP \(response.status) and no error body: \(text)")
    }

    /// Percent-encodes one path segment or query value (everything but RFC 3986's unreserved
    /// characters).
    public static func encode(_ component: String) -> String {
        var out = ""
        for byte in component.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return out
    }

    static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "\(error)" }
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            return keys.isEmpty ? "" : " at \(keys.joined(separator: "."))"
        }
        switch error {
        case .keyNotFound(let key, let context): return "missing field '\(key.stringValue)'\(path(context))"
        case .typeMismatch(let type, let context): return "expected \(type)\(path(context))"
        case .valueNotFound(let type, let context): return "expected \(type)\(path(context)), found null"
        case .dataCorrupted(let context): return "not valid JSON\(path(context))"
        @unknown default: return "\(error)"
        }
    }
}
