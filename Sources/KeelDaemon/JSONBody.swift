#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import NIOCore

/// JSON in and out of request and response bodies, with the daemon's size cap.
enum JSONBody {
    /// The largest request body the daemon reads (domain XML fits many times over).
    static let maximumRequestSize = 1 << 20

    /// Collects a request body of at most `maximumRequestSize` bytes.
    ///
    /// - Throws: `APIError` 413 for a larger body (checked against Content-Length first, so an
    ///   oversized upload is refused before it is read).
    static func collect(_ request: Request, limit: Int = maximumRequestSize) async throws -> ByteBuffer {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw tooLarge("request body of \(length) bytes exceeds the limit of \(limit) bytes")
        }
        do {
            return try await request.body.collect(upTo: limit)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw tooLarge("request body exceeds the limit of \(limit) bytes")
        }
    }

    /// The refusal of an oversized body. The connection closes after it: the rest of the body
    /// is never read, and a client still sending it must not wait for that.
    private static func tooLarge(_ message: String) -> APIError {
        APIError(status: .contentTooLarge, code: "payload-too-large", message: message, headers: [.connection: "close"])
    }

    /// Decodes a JSON request body; an empty body decodes as `{}`.
    ///
    /// - Throws: `APIError` 400 naming what is wrong with the JSON, 413 for an oversized body.
    static func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        let buffer = try await collect(request)
        let bytes = buffer.readableBytes == 0 ? Array("{}".utf8) : Array(buffer.readableBytesView)
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw APIError.badRequest("malformed JSON body: \(describe(error))")
        } catch {
            throw APIError.badRequest("malformed JSON body: \(error)")
        }
    }

    /// A 200 (or `status`) response with `value` encoded as JSON.
    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        return Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    /// A response with a text body.
    static func text(_ text: String, contentType: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: contentType], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    private static func describe(_ error: DecodingError) -> String {
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
