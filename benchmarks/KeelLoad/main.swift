// keel-load: a closed-loop HTTP/1.1 load generator for keeld's Unix socket, used by
// benchmarks/daemon-load.sh. One thread, `poll` over CONCURRENCY keep-alive connections, each
// with exactly one request in flight: as soon as a response is complete the connection sends
// its next request, so CONCURRENCY requests are always outstanding until TOTAL have been sent.
// Latency is measured per request from just before its `write` to the end of its response.
//
// Usage: keel-load SOCKET CONCURRENCY TOTAL REQUESTS_FILE [WARMUP]
//
// REQUESTS_FILE holds one request per line, `LABEL METHOD PATH [JSON-BODY]`; requests are taken
// in turn (round robin) from the file. Results are grouped by LABEL. WARMUP requests (default
// CONCURRENCY) are sent first and not counted. The exit status is 1 when any response was not
// 2xx or a connection failed.
import Glibc

func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func fail(_ message: String) -> Never {
    let text = Array("keel-load: \(message)\n".utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

struct Template {
    var label: String
    var bytes: [UInt8]
}

func loadTemplates(_ path: String) -> [Template] {
    guard let file = fopen(path, "r") else { fail("cannot open \(path)") }
    defer { fclose(file) }
    var templates: [Template] = []
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0 {
        guard let line else { break }
        let text = String(cString: line).split(separator: "\n").first.map(String.init) ?? ""
        let parts = text.split(separator: " ", maxSplits: 3).map(String.init)
        guard parts.count >= 3 else { continue }
        let body = parts.count == 4 ? parts[3] : ""
        var request = "\(parts[1]) \(parts[2]) HTTP/1.1\r\nHost: keeld\r\n"
        if parts[1] != "GET" {
            request += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
        }
        request += "\r\n" + body
        templates.append(Template(label: parts[0], bytes: Array(request.utf8)))
    }
    guard !templates.isEmpty else { fail("no requests in \(path)") }
    return templates
}

func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { fail("socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { fail("socket path too long") }
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        for (index, byte) in bytes.enumerated() { buffer[index] = byte }
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard result == 0 else { fail("connect \(path): \(String(cString: strerror(errno)))") }
    return fd
}

/// Where a response ends in `buffer`, or nil while it is incomplete; and its status code.
func responseEnd(_ buffer: [UInt8]) -> (end: Int, status: Int)? {
    guard buffer.count >= 4 else { return nil }
    var headerEnd = -1
    for index in 0...(buffer.count - 4) where buffer[index] == 13 && buffer[index + 1] == 10 && buffer[index + 2] == 13 && buffer[index + 3] == 10 {
        headerEnd = index + 4
        break
    }
    guard headerEnd > 0 else { return nil }
    let head = String(decoding: buffer[0..<headerEnd], as: UTF8.self).lowercased()
    let lines = head.split(separator: "\r\n")
    let status = lines.first.flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) } ?? 0
    for line in lines.dropFirst() {
        if line.hasPrefix("content-length:") {
            let length = Int(String(line.dropFirst("content-length:".count).filter { $0 != " " })) ?? 0
            return buffer.count >= headerEnd + length ? (headerEnd + length, status) : nil
        }
        if line.hasPrefix("transfer-encoding:") && line.contains("chunked") {
            // The last chunk is "0\r\n\r\n".
            let tail: [UInt8] = Array("0\r\n\r\n".utf8)
            guard buffer.count >= headerEnd + tail.count else { return nil }
            var index = headerEnd
            while index + tail.count <= buffer.count {
                if Array(buffer[index..<index + tail.count]) == tail && (index == headerEnd || buffer[index - 1] == 10) {
                    return (index + tail.count, status)
                }
                index += 1
            }
            return nil
        }
    }
    return (headerEnd, status)
}

final class Connection {
    let fd: Int32
    var buffer: [UInt8] = []
    var started: UInt64 = 0
    var template = 0
    var busy = false

    init(fd: Int32) { self.fd = fd }

    func send(_ request: Template, index: Int) {
        template = index
        started = now()
        busy = true
        request.bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    fail("write: \(String(cString: strerror(errno)))")
                }
                offset += written
            }
        }
    }
}

struct Sample {
    var label: Int
    var nanoseconds: UInt64
    var ok: Bool
}

/// Runs `total` requests over `concurrency` connections and returns the samples and the wall time.
func run(socket: String, concurrency: Int, total: Int, templates: [Template]) -> ([Sample], UInt64) {
    let connections = (0..<concurrency).map { _ in Connection(fd: connectUnix(socket)) }
    defer { for connection in connections { close(connection.fd) } }
    var samples: [Sample] = []
    samples.reserveCapacity(total)
    var sent = 0
    var next = 0
    let began = now()
    for connection in connections where sent < total {
        connection.send(templates[next], index: next)
        next = (next + 1) % templates.count
        sent += 1
    }
    var pollSet = connections.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
    var chunk = [UInt8](repeating: 0, count: 65536)
    while samples.count < total {
        let ready = poll(&pollSet, nfds_t(pollSet.count), 30_000)
        if ready < 0 && errno == EINTR { continue }
        guard ready > 0 else { fail("no response within 30 s (\(samples.count) of \(total) done)") }
        for index in pollSet.indices where pollSet[index].revents != 0 {
            let connection = connections[index]
            let count = chunk.withUnsafeMutableBytes { read(connection.fd, $0.baseAddress!, $0.count) }
            if count <= 0 {
                if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                fail("connection closed by keeld (\(samples.count) of \(total) done)")
            }
            connection.buffer.append(contentsOf: chunk[0..<count])
            guard let (end, status) = responseEnd(connection.buffer) else { continue }
            let finished = now()
            samples.append(Sample(label: connection.template, nanoseconds: finished - connection.started, ok: (200..<300).contains(status)))
            connection.buffer.removeFirst(end)
            connection.busy = false
            if sent < total {
                connection.send(templates[next], index: next)
                next = (next + 1) % templates.count
                sent += 1
            }
        }
    }
    return (samples, now() - began)
}

func milliseconds(_ nanoseconds: UInt64) -> String {
    let micro = Int((Double(nanoseconds) / 1000).rounded())
    let fraction = String(micro % 1000)
    return "\(micro / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
}

let arguments = CommandLine.arguments
guard arguments.count >= 5, let concurrency = Int(arguments[2]), let total = Int(arguments[3]), concurrency > 0, total > 0 else {
    fail("usage: keel-load SOCKET CONCURRENCY TOTAL REQUESTS_FILE [WARMUP]")
}
let templates = loadTemplates(arguments[4])
let warmup = arguments.count >= 6 ? (Int(arguments[5]) ?? concurrency) : concurrency
signal(SIGPIPE, SIG_IGN)
if warmup > 0 {
    _ = run(socket: arguments[1], concurrency: min(concurrency, warmup), total: warmup, templates: templates)
}
let (samples, wall) = run(socket: arguments[1], concurrency: concurrency, total: total, templates: templates)

var labels: [String] = []
for template in templates where !labels.contains(template.label) { labels.append(template.label) }
print("requests \(total), concurrency \(concurrency), wall \(milliseconds(wall)) ms, \(Int(Double(total) / (Double(wall) / 1e9))) requests/s")
print("label        count  errors   p50 ms   p90 ms   p99 ms   max ms")
var errors = 0
for label in labels {
    var values = samples.filter { templates[$0.label].label == label }
    let failed = values.filter { !$0.ok }.count
    errors += failed
    values.sort { $0.nanoseconds < $1.nanoseconds }
    guard !values.isEmpty else { continue }
    func percentile(_ p: Double) -> UInt64 { values[min(values.count - 1, Int((Double(values.count) * p).rounded(.up)) - 1)].nanoseconds }
    let padded = label.count < 10 ? label + String(repeating: " ", count: 10 - label.count) : label
    let columns = [String(values.count), String(failed), milliseconds(percentile(0.5)), milliseconds(percentile(0.9)),
                   milliseconds(percentile(0.99)), milliseconds(values[values.count - 1].nanoseconds)]
    print(padded + columns.map { String(repeating: " ", count: max(1, 9 - $0.count)) + $0 }.joined())
}
exit(errors == 0 ? 0 : 1)
