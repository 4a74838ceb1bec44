import KeelQEMU

/// The in-process job gate of one domain: one modifying job at a time; queries never pass
/// through it and so run alongside.
///
/// A second job waits for the first up to a bounded timeout, then fails with `.busy` naming the
/// job in progress. Waiters enter in their order of arrival (a ticket queue), so under a burst of
/// jobs on one domain none is overtaken again and again until its timeout. They poll (as the
/// driver's cross-process `DomainLock` does) instead of parking continuations, so a cancelled or
/// timed-out waiter only has to leave the queue.
actor DomainGate {
    /// A job holding the gate.
    struct Job: Sendable {
        var kind: String
        var since: ContinuousClock.Instant
    }

    let name: String
    private(set) var current: Job?
    private let pollInterval: Duration
    /// Tickets of the waiting jobs, in order of arrival.
    private var queue: [UInt64] = []
    /// How many jobs have asked for the gate so far; the next one's ticket.
    private(set) var arrivals: UInt64 = 0

    /// How many jobs wait for the gate.
    var waiting: Int { queue.count }

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
        let ticket = arrivals
        arrivals += 1
        queue.append(ticket)
        while current != nil || queue.first != ticket {
            if ContinuousClock.now >= deadline {
                queue.removeAll { $0 == ticket }
                let ahead = queue.isEmpty ? "" : ", \(queue.count) more waiting"
                if let held = current {
                    let elapsed = ContinuousClock.now - held.since
                    throw QEMUError(.busy, "domain \(name) is busy: \(held.kind) in progress for \(elapsed.secondsText) (waited \(timeout.secondsText)\(ahead))")
                }
                throw QEMUError(.busy, "domain \(name) is busy: jobs queued before this one (waited \(timeout.secondsText)\(ahead))")
            }
            // The actor is free while this task sleeps, so the holder can leave meanwhile.
            do {
                try await Task.sleep(for: pollInterval)
            } catch {
                queue.removeAll { $0 == ticket }
                throw error
            }
        }
        queue.removeFirst()
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
