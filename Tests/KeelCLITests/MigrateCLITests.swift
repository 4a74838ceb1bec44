import Foundation
import Testing

/// `keel migrate`'s arguments, checked before anything is asked of keeld.
@Suite("keel migrate: arguments")
struct MigrateCLITests {
    @Test("the destination comes as an argument or with --to, once; contradictions are refused clearly", arguments: [
        (["migrate", "web"], "name the destination: keel migrate NAME --to tls://HOST:PORT"),
        (["migrate", "web", "tls://a:1", "--to", "tls://b:2"], "name the destination once: as an argument or with --to"),
        (["migrate", "web", "--to", "http://b:2"], "the destination must be tls://HOST:PORT or tcp://HOST:PORT"),
        (["migrate", "web", "--to", "tls://b:2", "--live", "--offline"], "--live and --offline contradict each other"),
    ])
    func refusals(arguments: [String], message: String) throws {
        let result = try Keel.run(arguments + ["--connect", "embed:/nonexistent-keel-state"])
        #expect(result.status != 0)
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
    }

    @Test("--to and the argument name the same destination, --tls-stream and --dry-run are accepted: all reach the point where keeld is needed")
    func toOrArgument() throws {
        for arguments in [["migrate", "web", "--to", "tls://b:2", "--live"], ["migrate", "web", "tcp://b:2"],
                          ["migrate", "web", "--to", "tls://b:2", "--tls-stream"], ["migrate", "web", "--to", "tls://b:2", "--dry-run"]] {
            let result = try Keel.run(arguments + ["--connect", "embed:/nonexistent-keel-state"])
            #expect(result.status == 1)
            #expect(result.stderr.contains("migration runs in keeld"), "\(result.stderr)")
        }
    }
}
