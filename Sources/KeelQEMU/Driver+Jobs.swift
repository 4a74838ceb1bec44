import Glibc
import KeelQMP
import KeelSaveImage
import KeelXML

extension QEMUError.Code {
    /// A job was cancelled on request (`domjobabort`).
    public static let aborted = QEMUError.Code(rawValue: "aborted")
}

extension DomainStore {
    /// The progress record of the job running on a domain (written by the job's process).
    public func jobPath(_ name: String) -> String { root + "/run/\(name).job" }
    /// An abort request for the job running on a domain.
    public func jobAbortPath(_ name: String) -> String { root + "/run/\(name).job.abort" }
}

/// A long job (save, restore, migration) in progress on a domain, as its process last
/// recorded it in `STATE/run/NAME.job`:
///
/// ```
/// <job operation='save' pid='1234' started='1764180000000' updated='1764180000250' status='active' file='/srv/web.img'>
///   <data total='…' processed='…' remaining='…'/>      bytes; absent until QEMU reports them
///   <memory bandwidth='…'/>                             bytes per second
/// </job>
/// ```
///
/// `started` and `updated` are wall-clock milliseconds since the epoch (the reader is another
/// process, so a monotonic clock would not compare). `file` is the image a save writes or a
/// restore reads: recovery of a save whose process died looks at it.
public struct DomainJob: Sendable, Hashable {
    public enum Operation: String, Sendable, Hashable {
        case save, restore
        case migrationOut = "migration-out"
        case migrationIn = "migration-in"

        /// virsh's wording (`domjobinfo` "Operation:").
        public var displayName: String {
            switch self {
            case .save: "Save"
            case .restore: "Restore"
            case .migrationOut: "Outgoing migration"
            case .migrationIn: "Incoming migration"
            }
        }
    }

    public var operation: Operation
    /// The process running the job.
    public var pid: Int32
    public var startedMilliseconds: Int64
    public var updatedMilliseconds: Int64
    /// QEMU's migration status (`setup`, `active`, `completed`, …).
    public var status: String
    public var dataTotal: UInt64?
    public var dataProcessed: UInt64?
    public var dataRemaining: UInt64?
    /// Bytes per second.
    public var memoryBandwidth: UInt64?
    /// The image a save writes or a restore reads.
    public var file: String?

    public init(operation: Operation, pid: Int32, startedMilliseconds: Int64, updatedMilliseconds: Int64, status: String,
                dataTotal: UInt64? = nil, dataProcessed: UInt64? = nil, dataRemaining: UInt64? = nil, memoryBandwidth: UInt64? = nil,
                file: String? = nil) {
        self.operation = operation
        self.pid = pid
        self.startedMilliseconds = startedMilliseconds
        self.updatedMilliseconds = updatedMilliseconds
        self.status = status
        self.dataTotal = dataTotal
        self.dataProcessed = dataProcessed
        self.dataRemaining = dataRemaining
        self.memoryBandwidth = memoryBandwidth
        self.file = file
    }

    /// Milliseconds since the job started, as of `now`.
    public func elapsedMilliseconds(now: Int64 = DomainJob.wallClockMilliseconds()) -> Int64 {
        max(0, now - startedMilliseconds)
    }

    public var xmlElement: XMLElement {
        var root = XMLElement("job", attributes: [
            XMLAttribute("operation", operation.rawValue), XMLAttribute("pid", String(pid)),
            XMLAttribute("started", String(startedMilliseconds)), XMLAttribute("updated", String(updatedMilliseconds)),
            XMLAttribute("status", status),
        ])
        root.setAttribute("file", file)
        var data = XMLElement("data")
        data.setAttribute("total", dataTotal.map { String($0) })
        data.setAttribute("processed", dataProcessed.map { String($0) })
        data.setAttribute("remaining", dataRemaining.map { String($0) })
        root.append(data)
        var memory = XMLElement("memory")
        memory.setAttribute("bandwidth", memoryBandwidth.map { String($0) })
        root.append(memory)
        return root
    }

    public init(xml root: XMLElement) throws {
        guard root.name == "job",
              let operation = root.attribute("operation").flatMap(Operation.init(rawValue:)),
              let pid = root.attribute("pid").flatMap(Int32.init),
              let started = root.attribute("started").flatMap(Int64.init)
        else {
            throw QEMUError(.invalidState, "corrupt job record")
        }
        self.operation = operation
        self.pid = pid
        startedMilliseconds = started
        updatedMilliseconds = root.attribute("updated").flatMap(Int64.init) ?? started
        status = root.attribute("status") ?? ""
        let data = root.child("data")
        dataTotal = data?.attribute("total").flatMap(UInt64.init)
        dataProcessed = data?.attribute("processed").flatMap(UInt64.init)
        dataRemaining = data?.attribute("remaining").flatMap(UInt64.init)
        memoryBandwidth = root.child("memory")?.attribute("bandwidth").flatMap(UInt64.init)
        file = root.attribute("file")
    }

    /// The wall clock in milliseconds since the epoch.
    public static func wallClockMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    /// What an abort request names, so that a request meant for an earlier job never stops a
    /// later one.
    var identity: String { "\(pid) \(startedMilliseconds)" }

    /// Hears the progress of jobs run by the task it is bound to (and its child tasks), in this
    /// process: `try await DomainJob.$observer.withValue(observer) { try await driver.save(…) }`.
    public struct Observer: Sendable {
        /// Called with the domain's name and the job, on every change of QEMU's migration
        /// status and about every `interval` in between.
        public let report: @Sendable (_ domain: String, _ job: DomainJob) -> Void
        public let interval: Duration

        public init(interval: Duration = .milliseconds(500), _ report: @escaping @Sendable (_ domain: String, _ job: DomainJob) -> Void) {
            self.report = report
            self.interval = interval
        }
    }

    @TaskLocal public static var observer: Observer?
}

extension Driver {
    /// The job running on a domain, or nil when none is (a record whose process is gone is
    /// stale and ignored).
    ///
    /// - Throws: `QEMUError` `.notFound` for an unknown domain.
    public func jobInfo(name: String) throws -> DomainJob? {
        try DomainStore.validate(name: name)
        let (state, _) = try self.state(of: name)
        if state == .shutoff, try store.definition(name) == nil, !POSIXFile.exists(store.jobPath(name)) {
            throw QEMUError(.notFound, "domain '\(name)' not found")
        }
        return Self.readJob(store.jobPath(name))
    }

    /// Asks the job running on a domain to stop and waits until it has: a save or outgoing
    /// migration is cancelled in QEMU (the image is discarded and the guest resumes as it was),
    /// a restore stops its QEMU (the image is kept).
    ///
    /// The job's own process holds the domain's QMP monitor, so the request goes through the
    /// state directory (`STATE/run/NAME.job.abort`) and that process cancels at its next
    /// progress poll.
    ///
    /// - Returns: the job as last recorded before it stopped.
    /// - Throws: `QEMUError` `.invalidState` when no job is active, `.timeout` when it does not
    ///   stop within `timeout`.
    @discardableResult
    public func abortJob(name: String, timeout: Duration = .seconds(30)) async throws -> DomainJob {
        guard let job = try jobInfo(name: name) else {
            throw QEMUError(.invalidState, "no job is active on domain '\(name)'")
        }
        let request = store.jobAbortPath(name)
        try POSIXFile.writeAtomically(request, job.identity + "\n")
        defer { POSIXFile.remove(request) }
        let limit = ContinuousClock.now + timeout
        var last = job
        while let current = Self.readJob(store.jobPath(name)), current.identity == job.identity {
            last = current
            if ContinuousClock.now >= limit {
                throw QEMUError(.timeout, "the \(job.operation.rawValue) job on domain '\(name)' did not stop within \(timeout.components.seconds) s")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return last
    }

    static func readJob(_ path: String) -> DomainJob? {
        guard let job = readJobRecord(path), kill(job.pid, 0) == 0 || errno == EPERM else { return nil }
        return job
    }

    /// The job record as written, also when its process has died (recovery needs those).
    static func readJobRecord(_ path: String) -> DomainJob? {
        guard let text = try? POSIXFile.readString(path), !text.isEmpty,
              let root = try? XMLParser.parse(text), let job = try? DomainJob(xml: root)
        else { return nil }
        return job
    }
}

/// Records the progress of one job for `domjobinfo` and honours `domjobabort` requests.
/// Owned by the task running the job; `finish()` removes the record.
final class DomainJobRecorder {
    private let store: DomainStore
    private let name: String
    private var job: DomainJob
    private var lastWrite = ContinuousClock.now
    private var finished = false
    private let observer = DomainJob.observer
    private var lastReport: ContinuousClock.Instant?
    /// Whether the job was cancelled on request (`domjobabort`).
    private(set) var aborted = false

    init(store: DomainStore, name: String, operation: DomainJob.Operation, file: String? = nil) {
        self.store = store
        self.name = name
        let now = DomainJob.wallClockMilliseconds()
        job = DomainJob(operation: operation, pid: getpid(), startedMilliseconds: now, updatedMilliseconds: now, status: "setup", file: file)
        // A request left over from an earlier job must not stop this one.
        POSIXFile.remove(store.jobAbortPath(name))
        write()
    }

    deinit {
        finish()
    }

    /// Takes one `query-migrate` reply: records it (on a status change, else at most every 200 ms) and, when an abort
    /// was requested, cancels.
    ///
    /// - Parameters:
    ///   - info: QEMU's `query-migrate` reply.
    ///   - client: the job's QMP connection, for `migrate_cancel`.
    ///   - stream: for an incoming stream read from an image, the image being read (its file
    ///     position is how far QEMU got; QEMU reports no byte counts on that side).
    /// - Throws: `QEMUError` `.aborted` once the job is cancelled.
    func update(_ info: QMP.Value, client: QMP.Client, stream: SaveImageReader? = nil) async throws {
        let previousStatus = job.status
        job.status = info["status"]?.stringValue ?? job.status
        if let ram = info["ram"] {
            job.dataTotal = ram["total"]?.uint64Value
            job.dataProcessed = ram["transferred"]?.uint64Value
            job.dataRemaining = ram["remaining"]?.uint64Value
            job.memoryBandwidth = ram["mbps"]?.doubleValue.map { UInt64(max(0, $0) * 1_000_000 / 8) }
        } else if let stream {
            let position = lseek(stream.fileDescriptor, 0, SEEK_CUR)
            let total = stream.info.streamLength
            if position >= 0 {
                let processed = min(total, UInt64(position) - min(UInt64(position), stream.info.streamOffset))
                job.dataTotal = total
                job.dataProcessed = processed
                job.dataRemaining = total - processed
                let seconds = Double(job.elapsedMilliseconds()) / 1000
                if seconds > 0 { job.memoryBandwidth = UInt64(Double(processed) / seconds) }
            }
        }
        if job.status != previousStatus || ContinuousClock.now - lastWrite >= .milliseconds(200) {
            write()
        }
        if let observer, job.status != previousStatus || lastReport.map({ ContinuousClock.now - $0 >= observer.interval }) ?? true {
            lastReport = .now
            observer.report(name, job)
        }
        guard abortRequested else { return }
        self.aborted = true
        let aborted = QEMUError(.aborted, "operation aborted: \(job.operation.rawValue) of '\(name)' cancelled by client")
        if stream != nil || job.operation == .migrationIn {
            // QEMU cannot cancel an incoming stream; the caller stops this QEMU instead.
            throw aborted
        }
        try await client.execute("migrate_cancel")
        while true {
            switch try await client.execute("query-migrate")["status"]?.stringValue ?? "none" {
            case "cancelled":
                throw aborted
            case "completed", "failed", "none":
                // Too late to cancel, or failed anyway: the caller reports what happened.
                return
            default:
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    private var abortRequested: Bool {
        guard POSIXFile.exists(store.jobAbortPath(name)),
              let request = try? POSIXFile.readString(store.jobAbortPath(name))
        else { return false }
        return request.trimmingCharacters() == job.identity
    }

    private func write() {
        job.updatedMilliseconds = DomainJob.wallClockMilliseconds()
        lastWrite = .now
        // Progress is advisory: written without fsync, replaced atomically so readers never
        // see a torn record.
        try? POSIXFile.writeAtomically(store.jobPath(name), job.xmlElement.formatted(), durable: false)
    }

    /// Removes the record; the job is over.
    func finish() {
        guard !finished else { return }
        finished = true
        POSIXFile.remove(store.jobPath(name))
    }
}
