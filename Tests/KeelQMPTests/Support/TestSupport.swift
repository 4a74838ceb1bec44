import Foundation
import KeelQMP
import Testing

/// The directory of this test target's sources, found from this file's path so the fixtures
/// need no resource bundle.
let testSourceDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let repositoryRoot = testSourceDirectory.deletingLastPathComponent().deletingLastPathComponent()

/// A transcript recorded from real QEMU by scripts/record-qmp-transcripts.py.
struct Transcript: Sendable, CustomStringConvertible {
    enum Direction: String, Sendable {
        case toQEMU = "to-qemu"
        case fromQEMU = "from-qemu"
    }

    struct Record: Sendable {
        var direction: Direction
        var message: QMP.Value
        /// The line exactly as recorded.
        var line: String
    }

    var name: String
    var records: [Record]

    var description: String { name }

    /// The transcripts in Transcripts/, by file name.
    static func all() throws -> [Transcript] {
        let directory = testSourceDirectory.appendingPathComponent("Transcripts")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".jsonl") }
            .sorted()
        return try names.map { try load(directory.appendingPathComponent($0)) }
    }

    static func load(_ url: URL) throws -> Transcript {
        let text = try String(contentsOf: url, encoding: .utf8)
        var records: [Record] = []
        for line in text.split(separator: "\n") {
            let value = try QMP.Value(parsing: String(line))
            guard let direction = value["direction"]?.stringValue.flatMap(Direction.init(rawValue:)),
                  let message = value["message"]
            else { continue }  // notes
            // The message's own text, for feeding the state machine the recorded bytes.
            records.append(Record(direction: direction, message: message, line: message.jsonString()))
        }
        return Transcript(name: url.deletingPathExtension().lastPathComponent, records: records)
    }

    /// The commands the client sent after negotiation, each with QEMU's reply.
    var exchanges: [(request: QMP.Value, reply: QMP.Value)] {
        var replies: [UInt64: QMP.Value] = [:]
        for record in records where record.direction == .fromQEMU {
            if let id = record.message["id"]?.uint64Value { replies[id] = record.message }
        }
        return records.compactMap { record in
            guard record.direction == .toQEMU,
                  record.message["execute"]?.stringValue != "qmp_capabilities",
                  let id = record.message["id"]?.uint64Value,
                  let reply = replies[id]
            else { return nil }
            return (record.message, reply)
        }
    }

    var eventNames: [String] {
        records.compactMap { $0.direction == .fromQEMU ? $0.message["event"]?.stringValue : nil }
    }
}

/// Where `tool` is on PATH, or nil.
func findExecutable(_ tool: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") {
        let candidate = "\(directory)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

/// A fresh private temporary directory, removed by `cleanup()`.
struct TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/keel-qmp-test-XXXXXX".utf8CString)
        guard let created = template.withUnsafeMutableBufferPointer({ buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }) else {
            throw QMP.Error.systemCallFailed(call: "mkdtemp", errno: errno)
        }
        path = String(cString: created)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Waits until `condition` holds or `timeout` passes, checking every 50 ms.
func eventually(timeout: Duration, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let limit = ContinuousClock.now + timeout
    while ContinuousClock.now < limit {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}
