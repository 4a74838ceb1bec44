import Foundation
import KeelCPU
import KeelQEMU
import KeelQMP
import Testing

@Suite("feature-words parser")
struct FeatureWordsTests {
    /// The `qom-get` replies of a recorded QMP transcript, by property name.
    static func recordedReplies(_ transcript: String) throws -> [String: QMP.Value] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("KeelQMPTests/Transcripts/\(transcript)")
        let text = try String(contentsOf: url, encoding: .utf8)
        var pending: [Int64: String] = [:]
        var replies: [String: QMP.Value] = [:]
        for line in text.split(separator: "\n") {
            let record = try QMP.Value(parsing: String(line))
            guard let message = record["message"] else { continue }
            if record["direction"]?.stringValue == "to-qemu", message["execute"]?.stringValue == "qom-get",
               let id = message["id"]?.int64Value, let property = message["arguments"]?["property"]?.stringValue {
                pending[id] = property
            } else if record["direction"]?.stringValue == "from-qemu", let id = message["id"]?.int64Value,
                      let property = pending[id], let value = message["return"] {
                replies[property] = value
            }
        }
        return replies
    }

    static var map: CPUMap { get throws { try CPUMap.builtin.get() } }

    @Test("QEMU 7.2's feature-words and filtered-features parse into 24 words each", arguments: ["tcg-session.jsonl", "kvm-session.jsonl"])
    func recorded(transcript: String) throws {
        let replies = try Self.recordedReplies(transcript)
        let words = try CPUIDWord.parseFeatureWords(try #require(replies["feature-words"]))
        let filtered = try CPUIDWord.parseFeatureWords(try #require(replies["filtered-features"]))
        #expect(words.count == 24)
        #expect(filtered.count == 24)
        let leaf1EDX = try #require(words.first { $0.leaf == 1 && $0.subleaf == 0 && $0.register == .edx })
        // fpu (bit 0), tsc (4) and sse2 (26) are in every x86-64 CPU model.
        #expect(leaf1EDX.value & 1 != 0 && leaf1EDX.value & (1 << 4) != 0 && leaf1EDX.value & (1 << 26) != 0)
        let names = try Self.map.featureNames(in: Self.map.bits(ofCPUID: words).bits)
        #expect(names.contains("fpu") && names.contains("sse2") && names.contains("lm"))
    }

    @Test("a subleaf defaults to 0 and the register name is case-insensitive")
    func optionalSubleaf() throws {
        let words = try CPUIDWord.parseFeatureWords([
            ["cpuid-register": "EDX", "cpuid-input-eax": 1, "features": 0x0781_abfd],
            ["cpuid-register": "ecx", "cpuid-input-eax": 7, "cpuid-input-ecx": 0, "features": 0],
            ["cpuid-register": "EAX", "cpuid-input-eax": 0x4000_0001, "cpuid-input-ecx": 0, "features": 0xffff_ffff],
        ])
        #expect(words == [
            CPUIDWord(leaf: 1, subleaf: 0, register: .edx, value: 0x0781_abfd),
            CPUIDWord(leaf: 7, subleaf: 0, register: .ecx, value: 0),
            CPUIDWord(leaf: 0x4000_0001, subleaf: 0, register: .eax, value: 0xffff_ffff),
        ])
    }

    @Test("malformed feature words are refused as protocol violations", arguments: [
        QMP.Value.object([:]),
        [1],
        [["cpuid-register": "EDX", "features": 1]],
        [["cpuid-register": "EIX", "cpuid-input-eax": 1, "features": 1]],
        [["cpuid-register": "EDX", "cpuid-input-eax": 1, "features": 0x1_0000_0000]],
        [["cpuid-register": "EDX", "cpuid-input-eax": -1, "features": 1]],
        [["cpuid-register": "EDX", "cpuid-input-eax": 1, "cpuid-input-ecx": "0", "features": 1]],
        [["cpuid-register": "EDX", "cpuid-input-eax": 1]],
    ] as [QMP.Value])
    func malformed(value: QMP.Value) {
        #expect(throws: QEMUError.self) { try CPUIDWord.parseFeatureWords(value) }
        do {
            _ = try CPUIDWord.parseFeatureWords(value)
        } catch let error as QEMUError {
            #expect(error.code == .protocolViolation)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
