import Foundation
import KeelTestSupport
import KeelCPU
import KeelDomain
import KeelQEMU
import Testing

/// A throwaway state directory with the test guest, for end-to-end driver tests on real QEMU.
struct DriverFixture {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// Why end-to-end tests cannot run here, or nil when they can.
    static let unavailableReason: String? = {
        guard FileManager.default.isExecutableFile(atPath: qemu) else { return "qemu-system-x86_64 is not installed" }
        guard guestPath != nil else { return "the test guest cannot be built (is nasm installed?)" }
        if case .failure(let error) = CPUMap.builtin { return "the built-in CPU map does not load: \(error)" }
        return nil
    }()

    /// Whether /dev/kvm can be opened read-write.
    static let kvmUnavailableReason: String? = {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return "/dev/kvm cannot be opened: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }()

    /// The test guest, built with nasm on first use.
    static let guestPath: String? = {
        let elf = repository.appendingPathComponent("guest/keel-guest.elf").path
        guard (try? Subprocess.run("/usr/bin/make", ["-s", "-C", repository.appendingPathComponent("guest").path], timeout: 120)) != nil else { return nil }
        return FileManager.default.fileExists(atPath: elf) ? elf : nil
    }()

    let directory: URL
    let driver: Driver

    init(configuration: HostConfiguration? = nil) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-driver-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        driver = try Driver(stateDirectory: directory.appendingPathComponent("state").path, configuration: configuration)
    }

    func serialPath(_ name: String) -> String { directory.appendingPathComponent("\(name).serial").path }

    /// A tiny domain running the test guest.
    func domainXML(name: String, type: String = "qemu", memoryMiB: Int = 16, cpu: String, cmdline: String = "") -> String {
        """
        <domain type='\(type)'>
          <name>\(name)</name>
          <memory unit='MiB'>\(memoryMiB)</memory>
          <vcpu>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc'>hvm</type>
            <kernel>\(Self.guestPath ?? "")</kernel>
            <cmdline>\(cmdline)</cmdline>
          </os>
          \(cpu)
          <devices>
            <serial type='file'>
              <source path='\(serialPath(name))'/>
            </serial>
          </devices>
        </domain>
        """
    }

    /// Runs `body` with a fresh fixture and always tears it down, also when `body` throws.
    static func with<T>(configuration: HostConfiguration? = nil, _ body: (DriverFixture) async throws -> T) async throws -> T {
        let fixture = try DriverFixture(configuration: configuration)
        do {
            let result = try await body(fixture)
            await fixture.tearDown()
            return result
        } catch {
            await fixture.tearDown()
            throw error
        }
    }

    /// Stops every QEMU of this fixture and removes its files.
    func tearDown() async {
        for domain in (try? driver.list()) ?? [] where domain.state != .shutoff {
            try? await driver.destroy(name: domain.name)
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// The guest's CPUID block: the 5 `CPUID` lines of the `index`-th block (or the first block
    /// printed after `offset` bytes of serial output), waiting up to `timeout`.
    func cpuidBlock(_ name: String, after offset: Int = 0, timeout: TimeInterval = 60) async throws -> [String] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let data = FileManager.default.contents(atPath: serialPath(name)), data.count > offset {
                let text = String(decoding: data[offset...], as: UTF8.self)
                let lines = text.split(separator: "\n").map(String.init)
                if let start = lines.firstIndex(where: { $0.hasPrefix("CPUID 00000000") }), lines.count >= start + 5,
                   lines[start..<(start + 5)].allSatisfy({ $0.hasPrefix("CPUID ") }) {
                    return Array(lines[start..<(start + 5)])
                }
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "no CPUID block from \(name) within \(timeout)s"])
    }

    func serialSize(_ name: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: serialPath(name))[.size] as? Int) ?? 0
    }
}
