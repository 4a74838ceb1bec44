import Foundation
@testable import KeelDaemon
import Testing

/// dominfo's JSON is written by hand (`DomainInfo.json`); it must be what JSONEncoder makes of
/// the same value, byte for byte.
@Suite("keeld: dominfo's hand-written JSON")
struct JSONWriterTests {
    static let awkward = "quote \" backslash \\ slash / tab \t newline \n cr \r bell \u{07} nul \u{00} unit \u{1F} del \u{7F} é ✓ 𝄞"

    static let samples: [APIModels.DomainInfo] = [
        APIModels.DomainInfo(name: "web", uuid: nil, state: "shutoff", reason: nil, persistent: true, pid: nil, accelerator: nil,
                             qemuVersion: nil, cpu: nil, originalCPU: nil, autostart: false, managedSave: false),
        APIModels.DomainInfo(name: "db-1.2+x", uuid: "6795abf4-c378-4c58-bcf1-5e61778160c3", state: "running", reason: "booted",
                             persistent: false, pid: 4_194_303, accelerator: "kvm", qemuVersion: "7.2.19",
                             cpu: "<cpu mode='custom' match='exact' check='full'>\n  <model fallback='forbid'>qemu64</model>\n</cpu>",
                             originalCPU: "<cpu check='partial'/>", autostart: true, managedSave: true),
        APIModels.DomainInfo(name: awkward, uuid: awkward, state: "paused", reason: awkward, persistent: true, pid: -1,
                             accelerator: "tcg", qemuVersion: awkward, cpu: awkward, originalCPU: awkward, autostart: true, managedSave: false),
    ]

    @Test("every field, none, and strings with every character JSON escapes")
    func sameAsJSONEncoder() throws {
        for sample in Self.samples {
            let encoded = try JSONBody.response(sample)
            guard case .bytes(let expected) = encoded.body else { Issue.record("not a whole body"); continue }
            let written = sample.json
            #expect(written == Array(expected.readableBytesView), "\(String(decoding: written, as: UTF8.self))")
        }
    }
}
