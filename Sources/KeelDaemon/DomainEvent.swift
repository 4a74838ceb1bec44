#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import KeelQEMU

/// One line of `GET /v1/events`: a change of a domain's lifecycle, or the progress of its job.
///
/// ```
/// {"time":"2026-11-27T10:00:00.123Z","domain":"web","event":"saved","detail":"/srv/web.img"}
/// {"time":…,"domain":"web","event":"job-progress","detail":"active",
///  "job":{"operation":"save","bytesTotal":…,"bytesProcessed":…,"bytesRemaining":…,"throughput":…,"elapsedMs":…}}
/// {"time":…,"event":"overflow","detail":"12 events dropped"}
/// ```
///
/// `detail` is optional and free-form; `job` only comes with `job-progress`; `overflow` (no
/// domain) stands where a subscriber too slow to keep up lost events.
struct DomainEvent: Sendable, Hashable, Encodable {
    enum Kind: String, Sendable, Hashable, Encodable, CaseIterable {
        case defined, undefined, started, paused, resumed, saved, restored, stopped, crashed, shutdown
        /// Migration: the source's job began (detail: the destination), the guest left for the
        /// destination (detail: the destination), an incoming migration was accepted here
        /// (detail: the source host), a migration failed (detail: why; the guest stays on the
        /// source).
        case migrating, migrated, incoming
        case migrationFailed = "migration-failed"
        case jobProgress = "job-progress"
        case overflow
    }

    /// A job's progress, from its record (`domjobinfo`): bytes and bytes per second are 0
    /// until QEMU reports them.
    struct Progress: Sendable, Hashable, Encodable {
        var operation: String
        var bytesTotal: UInt64
        var bytesProcessed: UInt64
        var bytesRemaining: UInt64
        var throughput: UInt64
        var elapsedMs: Int64

        init(_ job: DomainJob) {
            operation = job.operation.rawValue
            bytesTotal = job.dataTotal ?? 0
            bytesProcessed = job.dataProcessed ?? 0
            bytesRemaining = job.dataRemaining ?? 0
            throughput = job.memoryBandwidth ?? 0
            elapsedMs = job.elapsedMilliseconds()
        }
    }

    /// RFC 3339, UTC, milliseconds.
    var time: String
    /// nil only for `overflow`.
    var domain: String?
    var event: Kind
    var detail: String?
    var job: Progress?

    init(_ event: Kind, domain: String?, detail: String? = nil, job: Progress? = nil, time: String = DomainEvent.now()) {
        self.time = time
        self.domain = domain
        self.event = event
        self.detail = detail
        self.job = job
    }

    static func progress(_ domain: String, _ job: DomainJob) -> DomainEvent {
        DomainEvent(.jobProgress, domain: domain, detail: job.status, job: Progress(job))
    }

    static func overflow(dropped: Int) -> DomainEvent {
        DomainEvent(.overflow, domain: nil, detail: "\(dropped) event\(dropped == 1 ? "" : "s") dropped")
    }

    /// The event as one NDJSON line (sorted keys, `\n`-terminated).
    var line: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var bytes = (try? Array(encoder.encode(self))) ?? Array(#"{"event":"overflow","detail":"unencodable event"}"#.utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// The wall clock as RFC 3339 in UTC with milliseconds: `2026-11-27T10:00:00.123Z`.
    static func now() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return rfc3339(seconds: Int(now.tv_sec), milliseconds: Int(now.tv_nsec / 1_000_000))
    }

    static func rfc3339(seconds: Int, milliseconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = milliseconds < 10 ? "00\(milliseconds)" : milliseconds < 100 ? "0\(milliseconds)" : "\(milliseconds)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }
}
