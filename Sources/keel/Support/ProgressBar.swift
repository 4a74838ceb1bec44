import Glibc
import KeelQEMU

/// Draws a job's progress on the terminal while `body` runs: a bar on stderr, refreshed from the
/// domain's job as the backend reports it (the job record in the state directory, or
/// `GET /v1/domains/NAME/job` from keeld), erased when done. Nothing is drawn when stderr is not
/// a terminal, so piped and scripted use stays quiet.
func withProgress<T>(backend: any Backend, domain: String, label: String, _ body: () async throws -> T) async throws -> T {
    guard isatty(2) == 1 else { return try await body() }
    let drawer = Task {
        var lastWidth = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            if Task.isCancelled { break }
            guard let job = try? await backend.jobInfo(name: domain), let line = progressLine(job, label: label) else { continue }
            lastWidth = max(lastWidth, line.count)
            writeAll(2, "\r" + line)
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

/// "Save [#####     ] 50% 8/16 MiB 120 MiB/s", or nil before QEMU reports a total.
func progressLine(_ job: DomainJob?, label: String) -> String? {
    guard let job, let total = job.dataTotal, total > 0 else { return nil }
    let done = min(job.dataProcessed ?? 0, total)
    let fraction = Double(done) / Double(total)
    let filled = Int(fraction * 30)
    let speed = job.memoryBandwidth.map { " \($0 >> 20) MiB/s" } ?? ""
    return "\(label) [" + String(repeating: "#", count: filled) + String(repeating: " ", count: 30 - filled)
        + "] \(Int(fraction * 100))% \(done >> 20)/\(total >> 20) MiB" + speed
}
