import ArgumentParser
import Glibc
import KeelClient
import KeelQEMU

/// `keel events`: follows keeld's event stream, as `virsh event --all --loop` does.
struct DomainEvents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Print domain lifecycle events and job progress as keeld reports them.",
        discussion: """
            One line per event (--json: one JSON object per line) until interrupted (exit 0), \
            until --count events were printed, or until --timeout seconds passed (exit 0). The \
            events come from keeld (GET /v1/events); an embedded keel has none to follow.
            """
    )

    @OptionGroup var options: DriverOptions
    @Option(help: "Only this domain's events.") var domain: String?
    @Option(help: "Stop after this many seconds.") var timeout: Double?
    @Option(help: "Stop after this many events.") var count: Int?
    @Flag(help: "Print each event as a JSON object on its own line.") var json = false

    func validate() throws {
        if let timeout, !(timeout.isFinite && timeout > 0 && timeout <= 31_536_000) {
            throw ValidationError("--timeout must be a positive number of seconds")
        }
        if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        if let domain { try DomainStore.validate(name: domain) }
    }

    func run() async throws {
        guard case .daemon(let socket) = try options.connection() else {
            throw CommandFailure(message: "events come from keeld, and no keeld is in use: start keeld, or name its socket with --connect unix:PATH")
        }
        let client = KeeldClient(socketPath: socket)
        let deadline = timeout.map { ContinuousClock.now + .milliseconds(Int64(($0 * 1000).rounded())) }
        // Interrupting is the usual way to stop following: a success, with nothing half-written
        // (each event is written with one write call).
        signal(SIGINT) { _ in _exit(0) }
        let limit = count
        let asJSON = json
        let filter = domain
        let end: UnixHTTPClient.StreamEnd
        do {
            end = try await DaemonBackend.offload {
                var printed = 0
                return try client.events(domain: filter, deadline: deadline) { event in
                    Output.print((asJSON ? Self.json(event).text : Self.text(event)) + "\n")
                    printed += 1
                    return limit.map { printed < $0 } ?? true
                }
            }
        } catch let error as KeeldError {
            throw CommandFailure(message: error.message)
        } catch let error as ClientError {
            throw CommandFailure(message: error.message)
        }
        if end == .finished {
            throw CommandFailure(message: "keeld ended the event stream (did it stop?)")
        }
    }

    /// virsh's wording: `event 'lifecycle' for domain 'web': Started Booted`.
    static func text(_ event: DomainEvent) -> String {
        let prefix = "event '\(event.event == "job-progress" ? "job-progress" : "lifecycle")' for domain '\(event.domain)': "
        let detail = event.detail.flatMap { $0.isEmpty ? nil : $0 }
        switch event.event {
        case "job-progress":
            return prefix + progress(event)
        case "saved", "restored":
            // libvirt reports these as a stop and a start with the reason as detail.
            let words = event.event == "saved" ? "Stopped Saved" : "Started Restored"
            return prefix + words + (detail.map { " (\($0))" } ?? "")
        case "migrating", "migrated", "incoming", "migration-failed":
            // libvirt's source reports a stop, migrated; the rest has no libvirt event.
            let words: [String: String] = [
                "migrating": "Migrating to", "migrated": "Stopped Migrated to", "incoming": "Incoming Migration from",
                "migration-failed": "Migration Failed:",
            ]
            return prefix + (words[event.event] ?? event.event) + (detail.map { " " + $0 } ?? "")
        default:
            let words: [String: String] = [
                "defined": "Defined", "undefined": "Undefined", "started": "Started", "paused": "Suspended", "resumed": "Resumed",
                "stopped": "Stopped", "crashed": "Crashed", "shutdown": "Shutdown",
            ]
            guard let word = words[event.event] else {
                return "event '\(event.event)' for domain '\(event.domain)'" + (detail.map { ": \($0)" } ?? "")
            }
            return prefix + word + (detail.map { " " + capitalized($0) } ?? "")
        }
    }

    /// "Save: 8.000 MiB of 16.000 MiB (50%), 8.000 MiB remaining, 120.000 MiB/s, 153 ms".
    static func progress(_ event: DomainEvent) -> String {
        guard let job = event.job else { return "progress" + (event.detail.map { " (\($0))" } ?? "") }
        var parts: [String] = []
        let operation = DomainJob.Operation(rawValue: job.operation)?.displayName ?? job.operation
        if let processed = job.bytesProcessed, let total = job.bytesTotal, total > 0 {
            let percent = Int(Double(min(processed, total)) / Double(total) * 100)
            parts.append("\(DomainJobInfo.capacity(processed)) of \(DomainJobInfo.capacity(total)) (\(percent)%)")
        } else if let processed = job.bytesProcessed {
            parts.append("\(DomainJobInfo.capacity(processed)) processed")
        }
        if let remaining = job.bytesRemaining { parts.append("\(DomainJobInfo.capacity(remaining)) remaining") }
        if let throughput = job.throughput { parts.append("\(DomainJobInfo.capacity(throughput))/s") }
        if let elapsed = job.elapsedMs { parts.append("\(elapsed) ms") }
        return operation + (parts.isEmpty ? "" : ": " + parts.joined(separator: ", "))
    }

    static func json(_ event: DomainEvent) -> JSON {
        var members: [(String, JSON)] = [("time", .string(event.time)), ("domain", .string(event.domain)), ("event", .string(event.event))]
        if let detail = event.detail { members.append(("detail", .string(detail))) }
        if let job = event.job {
            func number(_ value: UInt64?) -> JSON { value.flatMap { Int(exactly: $0) }.map(JSON.int) ?? .null }
            members.append(("job", .object([
                ("operation", .string(job.operation)), ("bytesTotal", number(job.bytesTotal)), ("bytesProcessed", number(job.bytesProcessed)),
                ("bytesRemaining", number(job.bytesRemaining)), ("throughput", number(job.throughput)),
                ("elapsedMs", job.elapsedMs.map { .int(Int($0)) } ?? .null),
            ])))
        }
        return .object(members)
    }

    static func capitalized(_ text: String) -> String {
        guard let first = text.first else { return text }
        return first.uppercased() + text.dropFirst()
    }
}
