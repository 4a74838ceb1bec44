import Foundation
import KeelTestSupport
import Testing

/// Real libvirt as the oracle: `scripts/interop.sh` saves with one manager and restores with the
/// other, in both directions, and compares what the guest sees.
@Suite("Interoperability with libvirt: save images cross both ways with the guest CPU unchanged", .serialized)
struct InteropTests {
    static let script = DriverFixture.repository.appendingPathComponent("scripts/interop.sh").path

    /// The `keel` binary built beside this test bundle (`swift build --build-tests` builds it).
    static let keel: String? = {
        var directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("keel").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return nil
    }()

    /// Why the interop script cannot run here, or nil when it can.
    static let unavailableReason: String? = {
        if let reason = DriverFixture.unavailableReason { return reason }
        let path = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        func installed(_ tool: String) -> Bool { path.contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") } }
        guard installed("virsh") else { return "virsh is not installed (libvirt-clients)" }
        guard installed("libvirtd") else { return "libvirtd is not installed (libvirt-daemon-system)" }
        guard getuid() == 0 else { return "libvirt's system daemon needs root" }
        guard keel != nil else { return "no keel binary beside the test bundle (build with --build-tests)" }
        return nil
    }()

    @Test("keel → libvirt and libvirt → keel: the guest's CPUID lines are identical and each side shows the other's updated CPU")
    func bothWays() throws {
        if let reason = Self.unavailableReason { print("SKIP: \(reason)"); return }
        // The script's steps take one to two minutes; it starts libvirtd and virtlogd when they
        // do not run, which must not keep this test waiting on their inherited descriptors.
        let result = try Subprocess.run("/bin/bash", [Self.script, Self.keel ?? ""], directory: DriverFixture.repository.path, timeout: 900)
        let text = result.output
        print(text)
        #expect(!result.timedOut, "scripts/interop.sh did not finish within 900 s")
        #expect(result.status == 0, "scripts/interop.sh failed:\n\(text.split(separator: "\n").filter { $0.hasPrefix("FAIL") || $0.contains("MISMATCH") || $0.contains("error:") }.joined(separator: "\n"))")
        #expect(text.contains("PASS interop"))
    }
}
