import Glibc
import KeelQEMU

/// Draws a job's progress on the terminal while `body` runs: a bar on stderr, refreshed from the
/// job record the driver keeps (`STATE/run/NAME.job`), erased when done. Nothing is drawn when
/// stderr is not a terminal, so piped and scripted use stays quiet.
func withProgress<T>(driver: Driver, domain: String, label: String, _ body: () async throws -> T) async throws -> T {
    guard isatty(2) == 1 else { return try await body() }
    let drawer = Task {
        var lastWidth = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            guard let job = try? driver.jobInfo(name: domain), let total = job.dataTotal, total > 0 else { continue }
            let done = min(job.dataProcessed ?? 0, total)
            let fraction = Double(done) / Double(total)
            let filled = Int(fraction * 30)
            let speed = job.memoryBandwidth.map { " \($0 >> 20) MiB/s" } ?? ""
            let line = "\r\(label) [" + String(repeating: "#", count: filled) + String(repeating: " ", count: 30 - filled)
                + "] \(Int(fraction * 100))% \(done >> 20)/\(total >> 20) MiB" + speed
            lastWidth = max(lastWidth, line.count)
            writeAll(2, line)
        }
        if lastWidth > 0 {
            writeAll(2, "\r" + String(repeating: " ", count: lastWidth) + "\r")
        }
    }
    do {
        let result = try await body()
        drawer.cancel()
        await drawer.value
        return result
    } catch {
        drawer.cancel()
        await drawer.value
        throw error
    }
}
