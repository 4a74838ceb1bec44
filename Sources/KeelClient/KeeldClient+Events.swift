#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One event of `GET /v1/events`: a line of its `application/x-ndjson` stream.
public struct DomainEvent: Codable, Sendable, Equatable {
    /// The progress of a save, restore or migration (`job-progress` events only).
    public struct JobProgress: Codable, Sendable, Equatable {
        public var operation: String
        public var bytesTotal: UInt64?
        public var bytesProcessed: UInt64?
        public var bytesRemaining: UInt64?
        /// Bytes per second.
        public var throughput: UInt64?
        public var elapsedMs: Int64?
    }

    /// RFC 3339.
    public var time: String
    public var domain: String
    /// `defined`, `undefined`, `started`, `paused`, `resumed`, `saved`, `restored`, `stopped`,
    /// `crashed`, `shutdown` or `job-progress`; others may come from newer daemons.
    public var event: String
    public var detail: String?
    public var job: JobProgress?
}

extension KeeldClient {
    /// The longest event line accepted.
    public static let maximumEventLineSize = 1 << 20

    /// Follows the daemon's event stream, calling `handler` for each event until it returns
    /// false, the daemon ends the stream, or `deadline` passes.
    ///
    /// - Parameters:
    ///   - domain: only this domain's events.
    ///   - deadline: when to stop listening; nil for never.
    /// - Returns: how the stream ended.
    /// - Throws: `KeeldError` when the daemon refuses the request, `ClientError` for a lost
    ///   connection or a line that is not an event.
    public func events(domain: String?, deadline: ContinuousClock.Instant?, _ handler: (DomainEvent) -> Bool) throws -> UnixHTTPClient.StreamEnd {
        let target = "/v1/events" + (domain.map { "?domain=" + Self.encode($0) } ?? "")
        let request = UnixHTTPClient.Request(method: "GET", target: target)
        var head: HTTPResponseParser.Head?
        var errorBody: [UInt8] = []
        var line: [UInt8] = []
        var failure: (any Error)?
        let decoder = JSONDecoder()
        let end = try http.stream(request, deadline: deadline) { event throws(ClientError) -> Bool in
            switch event {
            case .head(let value):
                head = value
                return true
            case .body(let bytes):
                guard let head, (200..<300).contains(head.status) else {
                    errorBody.append(contentsOf: bytes.prefix(UnixHTTPClient.maximumBodySize - errorBody.count))
                    return true
                }
                for byte in bytes {
                    guard byte == UInt8(ascii: "\n") else {
                        line.append(byte)
                        if line.count > Self.maximumEventLineSize {
                            throw ClientError(.protocolViolation, "an event line from keeld exceeds \(Self.maximumEventLineSize >> 20) MiB")
                        }
                        continue
                    }
                    defer { line.removeAll(keepingCapacity: true) }
                    // Blank lines may keep an idle connection alive.
                    if line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { continue }
                    do {
                        let decoded = try decoder.decode(DomainEvent.self, from: Data(line))
                        if !handler(decoded) { return false }
                    } catch {
                        failure = ClientError(.protocolViolation, "keeld sent an event that is not the expected JSON: \(Self.describe(error)): \(HTTPResponseParser.excerpt(line))")
                        return false
                    }
                }
                return true
            case .end:
                return true
            }
        }
        if let failure { throw failure }
        if let head, !(200..<300).contains(head.status) {
            try Self.check(UnixHTTPClient.Response(head: head, body: errorBody), request)
        }
        return end
    }
}
