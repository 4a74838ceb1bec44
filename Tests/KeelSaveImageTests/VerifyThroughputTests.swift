import Foundation
import KeelTestSupport
import Testing

import KeelSaveImage

/// `verify` against `cat FILE > /dev/null` on the same (page-cached) image. Opt-in:
/// `KEEL_SAVEIMAGE_BENCH=<size in MiB> swift test --filter VerifyThroughput`.
@Suite("Verify throughput")
struct VerifyThroughputTests {
    @Test("verify reads an image at least 80% as fast as cat")
    func throughput() throws {
        guard let sizeText = ProcessInfo.processInfo.environment["KEEL_SAVEIMAGE_BENCH"], let mib = Int(sizeText) else {
            print("skipping: set KEEL_SAVEIMAGE_BENCH=<MiB> to measure verify against cat")
            return
        }
        let dir = try TemporaryDirectory()
        let path = dir.file("bench.save")
        let writer = try SaveImageWriter(path: path, dataArea: SaveImageDataArea(xml: Samples.xml), wasRunning: true)
        var chunk = Samples.stream(count: 1 << 20)
        var rng = SplitMix64(seed: 1)
        for index in 0..<mib {
            if index > 0 {
                for i in stride(from: 0, to: chunk.count, by: 8) { chunk[i] = UInt8(truncatingIfNeeded: rng.next()) }
            }
            try writer.write(chunk)
        }
        try writer.finish()

        func cat() throws -> Double {
            let start = Date()
            _ = try Subprocess.run("/bin/sh", ["-c", "cat '\(path)' > /dev/null"], timeout: 300)
            return Date().timeIntervalSince(start)
        }
        func verify() throws -> Double {
            let start = Date()
            _ = try SaveImage.verify(path: path)
            return Date().timeIntervalSince(start)
        }
        _ = try cat()  // warm the page cache
        var catBest = Double.infinity, verifyBest = Double.infinity
        for _ in 0..<5 {
            catBest = min(catBest, try cat())
            verifyBest = min(verifyBest, try verify())
        }
        let ratio = catBest / verifyBest
        print("verify \(mib) MiB: \(Int(Double(mib) / verifyBest)) MiB/s, cat \(Int(Double(mib) / catBest)) MiB/s, ratio \(String(format: "%.2f", ratio))")
        #expect(ratio >= 0.8)
    }
}
