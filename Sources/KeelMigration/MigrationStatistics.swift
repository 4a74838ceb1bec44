import KeelXML

/// The statistics of a completed migration job as the cookie's `<statistics>` carries them
/// (libvirt's virDomainJobData and QEMU's `query-migrate` numbers).
///
/// | element | field | written |
/// |---|---|---|
/// | `started`, `stopped`, `sent` | job timestamps (ms since the epoch) | always |
/// | `delta` | the sender's clock minus the receiver's (ms, signed) | when known |
/// | `time_elapsed` | job duration (ms) | always |
/// | `downtime`, `setup_time` | QEMU's downtime and setup time (ms) | when QEMU reported them |
/// | `memory_total` … `memory_bps` | RAM totals, transferred, remaining, bytes/s | always |
/// | `memory_constant`, `memory_normal`, `memory_normal_bytes` | duplicate / normal pages | as a group, when reported |
/// | `memory_dirty_rate` … `memory_page_size` | dirty rate, iteration, postcopy requests, page size | always |
/// | `disk_total` … `disk_bps` | storage migration | always |
/// | `compression_cache` … `compression_overflow` | XBZRLE | as a group, when reported |
/// | `auto_converge_throttle` | CPU throttle percentage (int) | always |
///
/// Values that are missing or not numbers read as absent (0 for the always-written ones), as
/// libvirt reads them; the groups are recognised by their first element.
public struct MigrationStatistics: Sendable, Hashable {
    public struct Duplicates: Sendable, Hashable {
        public var constant: UInt64
        public var normal: UInt64
        public var normalBytes: UInt64

        public init(constant: UInt64 = 0, normal: UInt64 = 0, normalBytes: UInt64 = 0) {
            self.constant = constant
            self.normal = normal
            self.normalBytes = normalBytes
        }
    }

    public struct Compression: Sendable, Hashable {
        public var cache: UInt64
        public var bytes: UInt64
        public var pages: UInt64
        public var cacheMisses: UInt64
        public var overflow: UInt64

        public init(cache: UInt64 = 0, bytes: UInt64 = 0, pages: UInt64 = 0, cacheMisses: UInt64 = 0, overflow: UInt64 = 0) {
            self.cache = cache
            self.bytes = bytes
            self.pages = pages
            self.cacheMisses = cacheMisses
            self.overflow = overflow
        }
    }

    public var started: UInt64 = 0
    public var stopped: UInt64 = 0
    public var sent: UInt64 = 0
    public var delta: Int64?
    public var timeElapsed: UInt64 = 0
    public var downtime: UInt64?
    public var setupTime: UInt64?
    public var memoryTotal: UInt64 = 0
    public var memoryProcessed: UInt64 = 0
    public var memoryRemaining: UInt64 = 0
    public var memoryBPS: UInt64 = 0
    public var duplicates: Duplicates?
    public var memoryDirtyRate: UInt64 = 0
    public var memoryIteration: UInt64 = 0
    public var memoryPostcopyRequests: UInt64 = 0
    public var memoryPageSize: UInt64 = 0
    public var diskTotal: UInt64 = 0
    public var diskProcessed: UInt64 = 0
    public var diskRemaining: UInt64 = 0
    public var diskBPS: UInt64 = 0
    public var compression: Compression?
    public var autoConvergeThrottle: Int32 = 0

    public init() {}

    /// The `<statistics>` element in libvirt's order.
    public var xmlElement: XMLElement {
        var root = XMLElement("statistics")
        func add(_ name: String, _ value: some BinaryInteger) {
            root.append(XMLElement(name, text: String(value)))
        }
        add("started", started)
        add("stopped", stopped)
        add("sent", sent)
        if let delta { add("delta", delta) }
        add("time_elapsed", timeElapsed)
        if let downtime { add("downtime", downtime) }
        if let setupTime { add("setup_time", setupTime) }
        add("memory_total", memoryTotal)
        add("memory_processed", memoryProcessed)
        add("memory_remaining", memoryRemaining)
        add("memory_bps", memoryBPS)
        if let duplicates {
            add("memory_constant", duplicates.constant)
            add("memory_normal", duplicates.normal)
            add("memory_normal_bytes", duplicates.normalBytes)
        }
        add("memory_dirty_rate", memoryDirtyRate)
        add("memory_iteration", memoryIteration)
        add("memory_postcopy_requests", memoryPostcopyRequests)
        add("memory_page_size", memoryPageSize)
        add("disk_total", diskTotal)
        add("disk_processed", diskProcessed)
        add("disk_remaining", diskRemaining)
        add("disk_bps", diskBPS)
        if let compression {
            add("compression_cache", compression.cache)
            add("compression_bytes", compression.bytes)
            add("compression_pages", compression.pages)
            add("compression_cache_misses", compression.cacheMisses)
            add("compression_overflow", compression.overflow)
        }
        add("auto_converge_throttle", autoConvergeThrottle)
        return root
    }

    /// Reads a `<statistics>` element; nothing in it is an error.
    public init(xml element: XMLElement) {
        func text(_ name: String) -> String? { element.child(name)?.text.trimmedSpaces }
        func unsigned(_ name: String) -> UInt64? { text(name).flatMap { UInt64($0) } }
        started = unsigned("started") ?? 0
        stopped = unsigned("stopped") ?? 0
        sent = unsigned("sent") ?? 0
        delta = text("delta").flatMap { Int64($0) }
        timeElapsed = unsigned("time_elapsed") ?? 0
        downtime = unsigned("downtime")
        setupTime = unsigned("setup_time")
        memoryTotal = unsigned("memory_total") ?? 0
        memoryProcessed = unsigned("memory_processed") ?? 0
        memoryRemaining = unsigned("memory_remaining") ?? 0
        memoryBPS = unsigned("memory_bps") ?? 0
        if let constant = unsigned("memory_constant") {
            duplicates = Duplicates(constant: constant, normal: unsigned("memory_normal") ?? 0, normalBytes: unsigned("memory_normal_bytes") ?? 0)
        }
        memoryDirtyRate = unsigned("memory_dirty_rate") ?? 0
        memoryIteration = unsigned("memory_iteration") ?? 0
        memoryPostcopyRequests = unsigned("memory_postcopy_requests") ?? 0
        memoryPageSize = unsigned("memory_page_size") ?? 0
        diskTotal = unsigned("disk_total") ?? 0
        diskProcessed = unsigned("disk_processed") ?? 0
        diskRemaining = unsigned("disk_remaining") ?? 0
        diskBPS = unsigned("disk_bps") ?? 0
        if let cache = unsigned("compression_cache") {
            compression = Compression(
                cache: cache, bytes: unsigned("compression_bytes") ?? 0, pages: unsigned("compression_pages") ?? 0,
                cacheMisses: unsigned("compression_cache_misses") ?? 0, overflow: unsigned("compression_overflow") ?? 0
            )
        }
        autoConvergeThrottle = text("auto_converge_throttle").flatMap { Int32($0) } ?? 0
    }
}

extension String {
    var trimmedSpaces: String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
