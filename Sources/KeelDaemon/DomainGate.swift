import KeelQEMU

/// The in-process job gate of one domain: one modifying job at a time; queries never pass
/// through it and so run alongside.
///
/// A second job waits for the first up to a bounded timeout, then fails with `.busy` naming the
/// job in progress. Waiters poll (as the driver's cross-process `DomainLock` does) instead of
/// parking continuations, so a cancelled or timed-out waiter leaves nothing behind; the order in
/// which waiters enter is therefore not guaranteed to be their arrival order.
actor DomainGate {
    /// A job holding the gate.
    struct Job: Sendable {
        var kind: String
        var since: ContinuousClock.Instant
    }

    let name: String
    private(set) var current: Job?
    private let pollInterval: Duration

    init(name: String, pollInterval: Duration = .milliseconds(10)) {
        self.name = name
        self.pollInterval = pollInterval
    }

    /// Runs `body` as the domain's only modifying job.
    ///
    /// - Parameters:
    ///   - kind: the job's name (`start`, `save`, …), reported to jobs refused meanwhile.
    ///   - timeout: how long to wait for a job in progress.
    /// - Throws: `QEMUError` `.busy` naming the job in progress when it does not finish in time;
    ///   whatever `body` throws.
    func run<T: Sendable>(_ kind: String, timeout: Duration, _ body: @Sendable () async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while let held = current {
            if ContinuousClock.now >= deadline {
                let elapsed = ContinuousClock.now - held.since
                throw QEMUError(.busy, "domain \(name) is busy: \(held.kind) in progress for \(elapsed.secondsText) (waited \(timeout.secondsText))")
            }
            // The actor is free while this task sleeps, so the holder can leave meanwhile.
            try await Task.sleep(for: pollInterval)
        }
        current = Job(kind: kind, since: .now)
        defer { current = nil }
        return try await body()
    }
}

/// Hands out one `DomainGate` per domain name, for the daemon's lifetime.
actor DomainGateRegistry {
    private var gates: [String: DomainGate] = [:]

    func gate(for name: String) -> DomainGate {
        if let gate = gates[name] { return gate }
        let gate = DomainGate(name: name)
        gates[name] = gate
        return gate
    }
}

extension Duration {
    /// "1.5 s", for messages.
    var secondsText: String {
        let (whole, fraction) = components
        let milliseconds = fraction / 1_000_000_000_000_000
        if milliseconds == 0 { return "\(whole) s" }
        let text = String(milliseconds)
        let padded = String(repeating: "0", count: max(0, 3 - text.count)) + text
        var trimmed = Substring(padded)
        while trimmed.last == "0" { trimmed = trimmed.dropLast() }
        return "\(whole).\(trimmed) s"
    }

    /// The duration as a floating-point number of seconds.
    var secondsValue: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) / 1e18
    }
}
