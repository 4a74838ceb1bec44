import Foundation
import Testing

/// A client of `GET /v1/events`: reads the chunked NDJSON reply as it arrives, one event at a time.
/// One reader at a time (a test hands it to one thread).
final class EventStream: @unchecked Sendable {
    let fd: Int32
    let status: Int
    let headers: [String: String]
    /// Raw bytes received and not yet de-chunked.
    private var raw = Data()
    /// De-chunked body bytes not yet split into lines.
    private var body = Data()
    private(set) var ended = false

    /// Subscribes and waits for the reply's head: once this returns, every later event reaches the stream.
    init(socket: String, domain: String? = nil, receiveBuffer: Int32? = nil) throws {
        fd = try UnixHTTP.connect(socket, timeout: 60)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        let target = "/v1/events" + (domain.map { "?domain=\($0)" } ?? "")
        let request = Array("GET \(target) HTTP/1.1\r\nHost: keeld\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else {
            close(fd)
            throw UnixHTTP.Failure(description: "cannot send the events request")
        }
        let deadline = Date().addingTimeInterval(20)
        var head: Range<Data.Index>?
        while head == nil {
            guard Self.receive(fd, into: &raw, until: deadline) else {
                close(fd)
                throw UnixHTTP.Failure(description: "no reply head from GET \(target)")
            }
            head = raw.range(of: Data("\r\n\r\n".utf8))
        }
        let parsed = try UnixHTTP.parse(raw[raw.startIndex..<head!.upperBound])
        status = parsed.status
        headers = parsed.headers
        raw = Data(raw[head!.upperBound...])
    }

    deinit {
        close(fd)
    }

    /// The next event, or nil when none arrives within `timeout` or the stream ended.
    func next(timeout: TimeInterval = 10) -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            dechunk()
            if let newline = body.firstIndex(of: UInt8(ascii: "\n")) {
                let line = body[body.startIndex..<newline]
                body = Data(body[body.index(after: newline)...])
                return (try? JSONSerialization.jsonObject(with: line)) as? [String: Any] ?? ["unparsable": String(decoding: line, as: UTF8.self)]
            }
            if ended { return nil }
            if !Self.receive(fd, into: &raw, until: deadline) {
                if Date() >= deadline { return nil }
                ended = true
            }
        }
    }

    /// Events until one satisfies `stop` (included), or until `timeout` passes.
    func collect(timeout: TimeInterval = 30, until stop: ([String: Any]) -> Bool) -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(timeout)
        var events: [[String: Any]] = []
        while let event = next(timeout: max(0, deadline.timeIntervalSinceNow)) {
            events.append(event)
            if stop(event) { break }
        }
        return events
    }

    /// Whether the server ended the stream within `timeout` (reading and discarding events).
    func waitForEnd(timeout: TimeInterval = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !ended && Date() < deadline {
            _ = next(timeout: max(0, deadline.timeIntervalSinceNow))
        }
        return ended
    }

    /// Moves whole chunks from `raw` to `body`; a zero-size chunk ends the stream.
    private func dechunk() {
        while let lineEnd = raw.range(of: Data("\r\n".utf8)) {
            let sizeText = String(decoding: raw[raw.startIndex..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                ended = true
                return
            }
            if size == 0 {
                ended = true
                raw = Data()
                return
            }
            let start = lineEnd.upperBound
            guard raw.distance(from: start, to: raw.endIndex) >= size + 2 else { return }
            let stop = raw.index(start, offsetBy: size)
            body.append(raw[start..<stop])
            raw = Data(raw[raw.index(stop, offsetBy: 2)...])
        }
    }

    /// Reads what is available before `deadline`; false on timeout or end of stream.
    private static func receive(_ fd: Int32, into data: inout Data, until deadline: Date) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(max(0, min(Double(Int32.max), deadline.timeIntervalSinceNow * 1000)))
        guard poll(&descriptor, 1, milliseconds) > 0 else { return false }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = recv(fd, &chunk, chunk.count, 0)
        guard count > 0 else { return false }
        data.append(contentsOf: chunk[0..<count])
        return true
    }
}

extension Dictionary where Key == String, Value == Any {
    /// `event` and `detail` of an event line, for comparing sequences.
    var eventDetail: String {
        let event = self["event"] as? String ?? "?"
        return (self["detail"] as? String).map { "\(event) \($0)" } ?? event
    }
}
