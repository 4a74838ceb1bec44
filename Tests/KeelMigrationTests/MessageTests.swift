import Foundation
import KeelCPU
import KeelDomain
import KeelMigration
import Testing

@Suite("protocol messages, frames and version negotiation")
struct MessageTests {
    static let identity = MigrationMessage.DomainIdentity(name: "web-1", uuid: Guest.uuid)

    static let messages: [MigrationMessage] = [
        .init(.v2, .begin(.init(versions: [.v2, .v1], domain: identity, host: Guest.hostA))),
        .init(.v1, .beginReply(.init(versions: [.v1], host: Guest.hostB))),
        .init(.v2, .prepare(.init(xml: Guest.xml, cookie: "<qemu-migration/>\n", options: MigrationOptions(live: false, persistent: true, tlsStream: true)))),
        .init(.v2, .prepareReply(.init(cookie: "<qemu-migration/>\n", uri: "tcp:192.0.2.2:49152"))),
        .init(.v2, .prepareReply(.init(cookie: "c", uri: nil, verdict: CPUVerdict()))),
        .init(.v2, .perform),
        .init(.v2, .finish(.init(cookie: "c", resume: true))),
        .init(.v2, .finishReply(.init(cookie: "c", running: false))),
        .init(.v2, .confirm),
        .init(.v2, .abort(MigrationError(.incompatibleCPU, "this host cannot reproduce the guest CPU", verdict: Guest.refusal))),
        .init(.v2, .abort(MigrationError(.unsupported, "Unknown migration cookie feature vtpm-state", cookieFeature: "vtpm-state"))),
        .init(.v2, .query(identity)),
        .init(.v2, .queryReply(.incoming)),
    ]

    @Test("every message type survives JSON and a frame unchanged", arguments: messages)
    func roundTrip(message: MigrationMessage) throws {
        #expect(try MigrationMessage(json: message.encoded()) == message)
        var decoder = MigrationFrame.Decoder()
        decoder.append(try MigrationFrame.encode(message))
        #expect(try decoder.next() == message)
        #expect(try decoder.next() == nil)
    }

    @Test("a CPU refusal crosses the wire with each feature's CPUID bits")
    func refusalJSON() throws {
        let message = MigrationMessage(.v2, .abort(MigrationError(.incompatibleCPU, "refused", verdict: Guest.refusal)))
        let json = String(decoding: try message.encoded(), as: UTF8.self)
        #expect(json.contains(#""bits":["CPUID[eax=0x7,ecx=0x0].EBX bit 5"]"#))
        #expect(json.contains(#""locations":[{"leaf":7,"mask":32,"register":"ebx","subleaf":0,"type":"cpuid"}]"#))
        guard case .abort(let error) = try MigrationMessage(json: Array(json.utf8)).body else {
            Issue.record("not an abort")
            return
        }
        #expect(error.features.map(\.name) == ["avx2", "vmx"])
        #expect(error.features.first?.locations == [.cpuid(leaf: 7, subleaf: 0, register: .ebx, mask: 32)])
    }

    @Test("unknown fields are ignored; unknown types, missing fields and version 0 are violations")
    func validation() throws {
        let tolerant = #"{"protocol": 3, "type": "perform", "progress": {"percent": 40}}"#
        #expect(try MigrationMessage(json: Array(tolerant.utf8)) == MigrationMessage(MigrationProtocolVersion(rawValue: 3), .perform))
        for (json, message) in [
            (#"{"protocol": 2, "type": "teleport"}"#, "unknown migration message type 'teleport'"),
            (#"{"protocol": 2, "type": "finish", "cookie": "c"}"#, "migration message 'finish' lacks 'resume'"),
            (#"{"protocol": 0, "type": "perform"}"#, "migration message of type 'perform' has protocol version 0"),
            (#"{"protocol": 2, "type": "query-reply", "state": "elsewhere"}"#, "migration message 'query-reply' has unknown state 'elsewhere'"),
        ] {
            let error = refusal { try MigrationMessage(json: Array(json.utf8)) }
            #expect(error?.code == .protocolViolation)
            #expect(error?.message == message)
        }
        #expect(refusal { try MigrationMessage(json: Array("[1, 2".utf8)) }?.code == .protocolViolation)
    }

    @Test("frames split anywhere reassemble, and an oversized frame is refused before allocation")
    func frames() throws {
        var stream: [UInt8] = []
        for message in Self.messages { stream += try MigrationFrame.encode(message) }
        var decoder = MigrationFrame.Decoder()
        var received: [MigrationMessage] = []
        var generator = SystemRandomNumberGenerator()
        var index = 0
        while index < stream.count {
            let count = Int.random(in: 1...97, using: &generator)
            decoder.append(stream[index..<min(index + count, stream.count)])
            index += count
            while let message = try decoder.next() { received.append(message) }
        }
        #expect(received == Self.messages)

        var hostile = MigrationFrame.Decoder()
        hostile.append([0x7F, 0xFF, 0xFF, 0xFF])
        #expect(refusal { try hostile.next() }?.code == .protocolViolation)
    }

    @Test("the highest common version is chosen; none in common gives nil", arguments: [
        ([2, 1], [2, 1], 2), ([2, 1], [1], 1), ([1], [2, 1], 1), ([2, 1], [3, 2], 2), ([2, 1], [3], nil), ([1], [2], nil),
    ] as [([Int], [Int], Int?)])
    func negotiation(local: [Int], remote: [Int], expected: Int?) {
        let chosen = MigrationProtocolVersion.negotiate(local.map(MigrationProtocolVersion.init(rawValue:)), remote.map(MigrationProtocolVersion.init(rawValue:)))
        #expect(chosen?.rawValue == expected)
    }

    @Test("the JSON examples of docs/protocols/migration.md are valid messages")
    func documentedExamples() throws {
        let text = try String(contentsOf: Fixtures.repository.appendingPathComponent("docs/protocols/migration.md"), encoding: .utf8)
        var examples: [String] = []
        var inBlock = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```") {
                inBlock = line == "```json"
                continue
            }
            if inBlock && line.hasPrefix("{") { examples.append(String(line)) }
        }
        #expect(examples.count >= 11)
        var types: Set<String> = []
        for example in examples {
            let message = try MigrationMessage(json: Array(example.utf8))
            types.insert(message.type)
        }
        #expect(types == Set(Self.messages.map(\.type)))
    }
}
