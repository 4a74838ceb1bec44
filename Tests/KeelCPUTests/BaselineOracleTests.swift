import Foundation
import KeelCPU
import Testing

/// Keel's baseline against real libvirt 9.0 (`virsh -c test:///default cpu-baseline`), byte for byte.
@Suite("cpu-baseline agrees with libvirt")
struct BaselineOracleTests {
    static let seeds: [UInt64] = Array(1...200)

    @Test("200 seeded random sets of 2–8 host CPUs give virsh's output exactly, with and without --features")
    func randomSetsMatchVirsh() throws {
        guard let map = TestEnvironment.libvirtMap, let virsh = TestEnvironment.virsh else { return }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("keel-baseline-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var successes = 0
        var errors = 0
        for seed in Self.seeds {
            var rng = SeededGenerator(seed: seed)
            let cpus = RandomCPUs.hostSet(map: map, using: &rng)
            let file = directory.appendingPathComponent("set-\(seed).xml")
            try cpus.map { $0.formatted() }.joined().write(to: file, atomically: true, encoding: .utf8)
            for expand in [false, true] {
                let libvirt = try run(virsh, ["-c", "test:///default", "cpu-baseline", file.path] + (expand ? ["--features"] : []))
                let keel: Result<String, CPUError>
                do {
                    keel = .success(try map.baseline(cpus, expandFeatures: expand).formatted() + "\n")
                } catch let error as CPUError {
                    keel = .failure(error)
                }
                switch keel {
                case .success(let text):
                    #expect(libvirt.status == 0, "seed \(seed) expand=\(expand): libvirt failed (\(libvirt.stderr)) but Keel gave\n\(text)")
                    #expect(text == libvirt.stdout, "seed \(seed) expand=\(expand): outputs differ")
                    successes += 1
                case .failure(let error):
                    #expect(libvirt.status != 0, "seed \(seed) expand=\(expand): Keel failed with '\(error.message)' but libvirt gave\n\(libvirt.stdout)")
                    #expect(libvirt.stderr.contains(error.message), "seed \(seed) expand=\(expand): libvirt said '\(libvirt.stderr)', Keel '\(error.message)'")
                    errors += 1
                }
            }
        }
        print("baseline oracle: \(successes) identical results, \(errors) identical errors over \(Self.seeds.count) seeds")
        #expect(successes > 200, "too few successful baselines to be meaningful")
    }
}
