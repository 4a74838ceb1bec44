import Foundation
import KeelTestSupport
import Testing

/// The `keel` binary next to this test bundle.
enum Keel {
    static let binary: String = {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var directory = executable.deletingLastPathComponent()
        // The test bundle lives in .build/<triple>/debug/keelPackageTests.xctest or beside keel.
        for _ in 0..<3 {
            let candidate = directory.appendingPathComponent("keel").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/keel").path
    }()

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let libvirtMap = "/usr/share/libvirt/cpu_map"
    static var hasLibvirtMap: Bool { FileManager.default.fileExists(atPath: libvirtMap + "/index.xml") }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 30) throws -> Result {
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "KEEL_CPU_MAP")
        for (key, value) in environment { env[key] = value }
        let result = try Subprocess.run(binary, arguments, environment: env, directory: repository.path, timeout: timeout)
        if result.timedOut { throw Subprocess.Failure(description: "keel \(arguments) hung: killed after \(timeout) s") }
        return Result(status: result.status, stdout: result.stdout, stderr: result.stderr)
    }

    static func temporaryFile(_ name: String, _ contents: Data) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-cli-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent(name)
        try contents.write(to: url)
        return url.path
    }
}

@Suite("keel cpu-compare and cpu-baseline")
struct CLITests {
    @Test("cpu-baseline prints exactly what virsh prints for the example fleet, with and without --features")
    func baselineMatchesVirsh() throws {
        guard Keel.hasLibvirtMap, FileManager.default.isExecutableFile(atPath: "/usr/bin/virsh") else {
            print("SKIP: libvirt-clients is not installed; cpu-baseline is not compared with virsh")
            return
        }
        for flags in [[], ["--features"]] {
            let keel = try Keel.run(["cpu-baseline", "examples/cpu/fleet.xml", "--cpu-map", Keel.libvirtMap] + flags)
            let virsh = try Subprocess.run("/usr/bin/virsh", ["-c", "test:///default", "cpu-baseline", Keel.repository.appendingPathComponent("examples/cpu/fleet.xml").path] + flags, timeout: 60).stdout
            #expect(keel.status == 0)
            #expect(keel.stdout == virsh)
        }
    }

    @Test("cpu-compare reads a domain, capabilities, domain capabilities or a bare <cpu>, and words results as virsh does")
    func compareInputs() throws {
        guard Keel.hasLibvirtMap else {
            print("SKIP: libvirt's cpu_map is not installed")
            return
        }
        let map = ["--cpu-map", Keel.libvirtMap]
        let superset = try Keel.run(["cpu-compare", "examples/cpu/guest-skylake.xml", "--host", "examples/cpu/host-skylake.xml"] + map)
        #expect(superset.status == 0)
        #expect(superset.stdout == "Host CPU is a superset of CPU described in examples/cpu/guest-skylake.xml\n")
        let identical = try Keel.run(["cpu-compare", "examples/cpu/host-haswell.xml", "--host", "examples/cpu/host-haswell.xml"] + map)
        #expect(identical.stdout == "CPU described in examples/cpu/host-haswell.xml is identical to host CPU\n")
        let domcaps = try Keel.temporaryFile("domcaps.xml", Data("""
            <domainCapabilities><cpu><mode name='host-model' supported='yes'>
            <model fallback='forbid'>Haswell-noTSX-IBRS</model><vendor>Intel</vendor>
            <feature policy='require' name='vmx'/></mode></cpu></domainCapabilities>
            """.utf8))
        let fromDomcaps = try Keel.run(["cpu-compare", domcaps, "--host", "examples/cpu/host-haswell.xml"] + map)
        #expect(fromDomcaps.stdout == "Host CPU is a superset of CPU described in \(domcaps)\n")
        let incompatible = try Keel.run(["cpu-compare", "examples/cpu/guest-skylake.xml", "--host", "examples/cpu/host-haswell.xml"] + map)
        #expect(incompatible.status == 1)
        #expect(incompatible.stdout == "CPU described in examples/cpu/guest-skylake.xml is incompatible with host CPU\n")
    }

    @Test("--error turns an incompatible CPU into exit 2 with the offending features named")
    func compareError() throws {
        guard Keel.hasLibvirtMap else { print("SKIP: libvirt's cpu_map is not installed"); return }
        let result = try Keel.run(["cpu-compare", "examples/cpu/guest-nehalem.xml", "--host", "examples/cpu/host-haswell.xml", "--error", "--cpu-map", Keel.libvirtMap])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr == "error: the CPU is incompatible with host CPU: Host CPU provides forbidden features: vmx\n")
    }

    @Test("--json output is JSON naming the result and the deciding features with their CPUID bits")
    func json() throws {
        guard Keel.hasLibvirtMap else { print("SKIP: libvirt's cpu_map is not installed"); return }
        let compare = try Keel.run(["cpu-compare", "examples/cpu/guest-skylake.xml", "--host", "examples/cpu/host-haswell.xml", "--json", "--cpu-map", Keel.libvirtMap])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(compare.stdout.utf8)) as? [String: Any])
        #expect(object["result"] as? String == "incompatible")
        let features = try #require(object["features"] as? [String: Any])
        let missing = try #require(features["missing"] as? [[String: Any]])
        #expect(missing.contains { $0["name"] as? String == "f16c" && ($0["bits"] as? [String])?.first == "CPUID[eax=0x1,ecx=0x0].ECX bit 29" })
        let baseline = try Keel.run(["cpu-baseline", "examples/cpu/fleet.xml", "--json", "--cpu-map", Keel.libvirtMap])
        let result = try #require(try JSONSerialization.jsonObject(with: Data(baseline.stdout.utf8)) as? [String: Any])
        #expect((result["cpu"] as? String)?.hasPrefix("<cpu mode='custom' match='exact'>") == true)
        #expect(result["model"] as? String == "Haswell-noTSX-IBRS")
    }

    @Test("KEEL_CPU_MAP selects the map like --cpu-map")
    func environmentMap() throws {
        guard Keel.hasLibvirtMap else { print("SKIP: libvirt's cpu_map is not installed"); return }
        let viaEnv = try Keel.run(["cpu-baseline", "examples/cpu/fleet.xml"], environment: ["KEEL_CPU_MAP": Keel.libvirtMap])
        let viaFlag = try Keel.run(["cpu-baseline", "examples/cpu/fleet.xml", "--cpu-map", Keel.libvirtMap])
        #expect(viaEnv.status == 0)
        #expect(viaEnv.stdout == viaFlag.stdout)
        let missing = try Keel.run(["cpu-baseline", "examples/cpu/fleet.xml", "--cpu-map", "/nonexistent"])
        #expect(missing.status == 1)
        #expect(missing.stderr == "error: CPU map file index.xml not found\n")
    }
}

/// Bad input: a one-line error naming the problem and exit 1, never a crash or a hang.
@Suite("bad input to the CPU commands")
struct BadInputTests {
    static func garbage(_ count: Int) -> Data {
        var state: UInt64 = 42
        return Data((0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        })
    }

    static let cases: [(String, Data, String)] = [
        ("malformed.xml", Data("<cpu>\n  <model>Nehalem</model>\n  <feature name='vmx'>\n</cpu>\n".utf8), "malformed XML at line"),
        ("unknown-model.xml", Data("<cpu><arch>x86_64</arch><model>Pentium-9000</model></cpu>".utf8), "Unknown CPU model Pentium-9000"),
        ("unknown-feature.xml", Data("<cpu><arch>x86_64</arch><model>Nehalem</model><feature name='warp-drive'/></cpu>".utf8), "Unknown CPU feature warp-drive"),
        ("bad-policy.xml", Data("<cpu><model>Nehalem</model><feature policy='sometimes' name='vmx'/></cpu>".utf8), "Invalid CPU feature policy"),
        ("entity-bomb.xml", Data("<?xml version='1.0'?>\n<!DOCTYPE b [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]>\n<cpu><model>&c;</model></cpu>".utf8), "not allowed"),
        ("garbage.bin", garbage(65536), "error"),
        ("no-cpu.xml", Data("<domain><name>x</name></domain>".utf8), "does not contain any <cpu> element"),
        ("empty.xml", Data(), "error"),
    ]

    @Test("each bad file gives one line on stderr and exit 1", arguments: cases)
    func badFile(name: String, contents: Data, expected: String) throws {
        let path = try Keel.temporaryFile(name, contents)
        for command in [["cpu-baseline", path], ["cpu-compare", path, "--host", "examples/cpu/host-haswell.xml"]] {
            let result = try Keel.run(command)
            // cpu-baseline reads host CPUs, which have no policies but need <arch>.
            let expected = command[0] == "cpu-baseline" && name == "bad-policy.xml" ? "Missing CPU architecture" : expected
            #expect(result.status == 1, "\(command): \(result.stdout) \(result.stderr)")
            #expect(result.stdout.isEmpty, "\(command)")
            #expect(result.stderr.hasPrefix("error: "), "\(command): \(result.stderr)")
            #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(command): not one line: \(result.stderr)")
            #expect(result.stderr.contains(expected), "\(command): \(result.stderr)")
        }
    }

    @Test("a 100 MB file is refused by its size without being read")
    func hugeFile() throws {
        let path = try Keel.temporaryFile("huge.xml", Data())
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: 100 << 20)
        try handle.close()
        let result = try Keel.run(["cpu-baseline", path], timeout: 10)
        #expect(result.status == 1)
        #expect(result.stderr == "error: file \(path) is too large: 104857600 bytes, the limit is 10485760\n")
    }

    @Test("missing files, directories and bad options are one-line errors with exit 1")
    func missingAndOptions() throws {
        let missing = try Keel.run(["cpu-baseline", "/nonexistent/cpus.xml"])
        #expect(missing.status == 1)
        #expect(missing.stderr == "error: cannot read /nonexistent/cpus.xml: No such file or directory\n")
        let directory = try Keel.run(["cpu-compare", "/tmp", "--host", "/tmp"])
        #expect(directory.status == 1)
        #expect(directory.stderr == "error: cannot read /tmp: it is a directory\n")
        let option = try Keel.run(["cpu-baseline"])
        #expect(option.status == 1)
        #expect(option.stderr.hasPrefix("error: "))
        #expect(option.stderr.filter { $0 == "\n" }.count == 1)
    }
}

@Suite("keel cpu-compare against this host")
struct ThisHostCompareTests {
    @Test("without --host the CPU is compared with this machine's CPU as KVM offers it")
    func thisHost() throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("keel-thishost-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let fd = open("/dev/kvm", O_RDWR)
        let kvm = fd >= 0
        if fd >= 0 { close(fd) }
        let result = try Keel.run(["cpu-compare", "examples/cpu/host-haswell.xml", "--state", state], timeout: 60)
        if kvm {
            // A Haswell host CPU with vmx is not what this (nested) machine offers a guest; the
            // point is that a real host CPU was compared: the answer names a result, not "unknown".
            #expect(result.stdout.hasPrefix("CPU described in") || result.stdout.hasPrefix("Host CPU is a superset"), "\(result.stdout)\(result.stderr)")
            let simple = try Keel.temporaryFile("pentium3.xml", Data("<cpu><model>pentium3</model></cpu>".utf8))
            let compatible = try Keel.run(["cpu-compare", simple, "--state", state], timeout: 60)
            #expect(compatible.status == 0, "\(compatible.stdout)\(compatible.stderr)")
        } else {
            print("SKIP (KVM): /dev/kvm is not usable; without it the host CPU is unknown, as in libvirt")
            let strict = try Keel.run(["cpu-compare", "examples/cpu/host-haswell.xml", "--state", state, "--error"], timeout: 60)
            #expect(strict.stderr == "error: the CPU is incompatible with host CPU: unknown host CPU\n")
        }
    }
}
