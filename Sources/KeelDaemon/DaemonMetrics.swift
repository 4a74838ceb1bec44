import NIOConcurrencyHelpers

/// The daemon's counters, rendered in Prometheus' text format by `GET /metrics`.
///
/// ```
/// keel_jobs_total{job="save",outcome="ok"} 3          counter, outcome = ok or the error code
/// keel_job_seconds_total{job="save"} 4.2              counter
/// keel_save_bytes_total / keel_save_seconds_total     counter, successful saves
/// keel_restore_bytes_total / keel_restore_seconds_total
/// keel_domains{state="running"} 1                     gauge, read from the state directory
/// keel_event_subscribers 2                            gauge, open GET /v1/events streams
/// keel_events_total / keel_events_dropped_total       counter, published; lost to slow subscribers
/// keel_watched_processes 3                            gauge, QEMU processes followed for exits
/// ```
final class DaemonMetrics: Sendable {
    /// The event bus and watcher, as of the request.
    struct Events {
        var subscribers: Int
        var published: Int
        var dropped: Int
        var watched: Int
    }

    private struct Counters {
        var jobs: [JobKey: Int] = [:]
        var jobSeconds: [String: Double] = [:]
        var saveBytes: Int64 = 0
        var saveSeconds: Double = 0
        var restoreBytes: Int64 = 0
        var restoreSeconds: Double = 0
    }

    private struct JobKey: Hashable, Comparable {
        var job: String
        var outcome: String
        static func < (a: JobKey, b: JobKey) -> Bool { (a.job, a.outcome) < (b.job, b.outcome) }
    }

    private let counters = NIOLockedValueBox(Counters())

    func recordJob(_ job: String, outcome: String, seconds: Double) {
        counters.withLockedValue {
            $0.jobs[JobKey(job: job, outcome: outcome), default: 0] += 1
            $0.jobSeconds[job, default: 0] += seconds
        }
    }

    func recordSave(bytes: Int64, seconds: Double) {
        counters.withLockedValue {
            $0.saveBytes += bytes
            $0.saveSeconds += seconds
        }
    }

    func recordRestore(bytes: Int64, seconds: Double) {
        counters.withLockedValue {
            $0.restoreBytes += bytes
            $0.restoreSeconds += seconds
        }
    }

    /// The exposition text, with `domains` counted by state.
    func render(domains: [String: Int], events: Events = Events(subscribers: 0, published: 0, dropped: 0, watched: 0)) -> String {
        let counters = counters.withLockedValue { $0 }
        var out = ""
        out += "# HELP keel_jobs_total Modifying jobs run by keeld, by job and outcome (ok or the error code).\n"
        out += "# TYPE keel_jobs_total counter\n"
        for (key, count) in counters.jobs.sorted(by: { $0.key < $1.key }) {
            out += "keel_jobs_total{job=\"\(Self.escape(key.job))\",outcome=\"\(Self.escape(key.outcome))\"} \(count)\n"
        }
        out += "# HELP keel_job_seconds_total Time spent in modifying jobs, by job.\n"
        out += "# TYPE keel_job_seconds_total counter\n"
        for (job, seconds) in counters.jobSeconds.sorted(by: { $0.key < $1.key }) {
            out += "keel_job_seconds_total{job=\"\(Self.escape(job))\"} \(Self.number(seconds))\n"
        }
        out += "# HELP keel_save_bytes_total Bytes written to save images by successful saves.\n"
        out += "# TYPE keel_save_bytes_total counter\n"
        out += "keel_save_bytes_total \(counters.saveBytes)\n"
        out += "# HELP keel_save_seconds_total Time spent in successful saves.\n"
        out += "# TYPE keel_save_seconds_total counter\n"
        out += "keel_save_seconds_total \(Self.number(counters.saveSeconds))\n"
        out += "# HELP keel_restore_bytes_total Bytes of save images read by successful restores.\n"
        out += "# TYPE keel_restore_bytes_total counter\n"
        out += "keel_restore_bytes_total \(counters.restoreBytes)\n"
        out += "# HELP keel_restore_seconds_total Time spent in successful restores.\n"
        out += "# TYPE keel_restore_seconds_total counter\n"
        out += "keel_restore_seconds_total \(Self.number(counters.restoreSeconds))\n"
        out += "# HELP keel_domains Domains on this host by state.\n"
        out += "# TYPE keel_domains gauge\n"
        for state in ["shutoff", "running", "paused", "crashed"] {
            out += "keel_domains{state=\"\(state)\"} \(domains[state] ?? 0)\n"
        }
        out += "# HELP keel_event_subscribers Open event streams (GET /v1/events).\n"
        out += "# TYPE keel_event_subscribers gauge\n"
        out += "keel_event_subscribers \(events.subscribers)\n"
        out += "# HELP keel_events_total Events published.\n"
        out += "# TYPE keel_events_total counter\n"
        out += "keel_events_total \(events.published)\n"
        out += "# HELP keel_events_dropped_total Events dropped for subscribers that did not keep up.\n"
        out += "# TYPE keel_events_dropped_total counter\n"
        out += "keel_events_dropped_total \(events.dropped)\n"
        out += "# HELP keel_watched_processes QEMU processes followed for exits.\n"
        out += "# TYPE keel_watched_processes gauge\n"
        out += "keel_watched_processes \(events.watched)\n"
        return out
    }

    private static func number(_ value: Double) -> String {
        value.isFinite ? String(value) : "NaN"
    }

    private static func escape(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
