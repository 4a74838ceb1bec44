import Glibc
import KeelDomain
import KeelXML

/// The driver's state directory:
///
/// ```
/// STATE/config.xml                  host configuration (emulator, CPU ceiling)
/// STATE/domains/NAME.xml            persistent definitions
/// STATE/run/NAME.status.xml         status of running domains
/// STATE/run/NAME.qmp, NAME.pid      QMP socket and pidfile
/// STATE/run/NAME.events             QEMU's second QMP monitor, for event watchers only
/// STATE/run/NAME.lock               job lock (flock; released when its holder exits)
/// STATE/log/NAME.log                QEMU's output
/// STATE/cache/capabilities/         probed QEMU capabilities
/// ```
public struct DomainStore: Sendable {
    public let root: String
    /// Parsed definitions and status files kept while their files are unchanged (`keeld`);
    /// nil reads and parses every time (a one-shot `keel`).
    public let cache: ParsedFileCache?

    public init(root: String, cache: ParsedFileCache? = nil) throws {
        self.root = root
        self.cache = cache
        for directory in ["", "/domains", "/run", "/log", "/cache/capabilities"] {
            try POSIXFile.makeDirectory(root + directory)
        }
    }

    public var configurationPath: String { root + "/config.xml" }
    public var capabilitiesCache: String { root + "/cache/capabilities" }
    public func definitionPath(_ name: String) -> String { root + "/domains/\(name).xml" }
    public func statusPath(_ name: String) -> String { root + "/run/\(name).status.xml" }
    public func qmpPath(_ name: String) -> String { root + "/run/\(name).qmp" }
    public func pidPath(_ name: String) -> String { root + "/run/\(name).pid" }
    public func eventsPath(_ name: String) -> String { root + "/run/\(name).events" }
    public func lockPath(_ name: String) -> String { root + "/run/\(name).lock" }
    public func logPath(_ name: String) -> String { root + "/log/\(name).log" }

    /// Names of all defined domains.
    public func names() -> [String] {
        POSIXFile.list(root + "/domains").compactMap { $0.hasSuffix(".xml") ? String($0.dropLast(4)) : nil }
    }

    public func definition(_ name: String) throws -> DomainDefinition? {
        let parse = { (text: String) throws -> DomainDefinition in
            do {
                return try DomainDefinition(xmlString: text)
            } catch {
                throw QEMUError(.invalidState, "stored definition of \(name) is corrupt: \(error)")
            }
        }
        if let cache { return try cache.value(definitionPath(name), parse: parse) }
        return try POSIXFile.readString(definitionPath(name)).map(parse)
    }

    public func save(_ definition: DomainDefinition) throws {
        try POSIXFile.writeAtomically(definitionPath(definition.name), definition.formatted())
    }

    public func removeDefinition(_ name: String) {
        POSIXFile.remove(definitionPath(name))
        POSIXFile.syncDirectory(of: definitionPath(name))
    }

    public func status(_ name: String) throws -> DomainStatus? {
        let parse = { (text: String) throws -> DomainStatus in
            do {
                return try DomainStatus(xml: XMLParser.parse(text))
            } catch let error as QEMUError {
                throw error
            } catch {
                throw QEMUError(.invalidState, "status of \(name) is corrupt: \(error)")
            }
        }
        if let cache { return try cache.value(statusPath(name), parse: parse) }
        return try POSIXFile.readString(statusPath(name)).map(parse)
    }

    /// Writes the runtime status of a running domain.
    ///
    /// - Parameter durable: fsync the file and its directory. A status that only follows a
    ///   live QEMU (paused, resumed, committed by a migration) may skip it: it describes a
    ///   process that a power loss ends too, and the rename keeps it whole for a restarted keeld.
    public func save(_ status: DomainStatus, durable: Bool = true) throws {
        try POSIXFile.writeAtomically(statusPath(status.live.name), status.xmlElement.formatted(), durable: durable)
    }

    /// Removes the status, sockets and pidfile of a domain that no longer runs.
    public func clearRuntime(_ name: String) {
        for path in [statusPath(name), qmpPath(name), eventsPath(name), pidPath(name)] {
            POSIXFile.remove(path)
        }
        POSIXFile.syncDirectory(of: statusPath(name))
    }

    /// Validates a domain name for use in file names.
    public static func validate(name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 200, !name.hasPrefix("."),
              name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.+".contains($0) })
        else {
            throw QEMUError(.invalidArgument, "invalid domain name '\(name)': use letters, digits and - _ . +")
        }
    }
}

/// A held job lock on one domain: one modifying job at a time, across processes.
public final class DomainLock: Sendable {
    private let fd: Int32

    private init(fd: Int32) {
        self.fd = fd
    }

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }

    /// Takes the lock for `job`, waiting up to `timeout` for a job in progress to finish.
    ///
    /// - Throws: `QEMUError` `.busy` naming the job in progress and its process.
    public static func acquire(store: DomainStore, name: String, job: String, timeout: Duration = .seconds(5)) throws -> DomainLock {
        let path = store.lockPath(name)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw QEMUError(.io, "cannot open lock \(path): \(errnoText())") }
        let limit = ContinuousClock.now + timeout
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno != EWOULDBLOCK && errno != EINTR {
                close(fd)
                throw QEMUError(.io, "cannot lock \(path): \(errnoText())")
            }
            if ContinuousClock.now >= limit {
                let holder = (try? POSIXFile.readString(path))?.trimmingCharacters() ?? "another job"
                close(fd)
                throw QEMUError(.busy, "domain \(name) is busy: \(holder.isEmpty ? "another job" : holder) in progress")
            }
            usleep(20_000)
        }
        ftruncate(fd, 0)
        let text = "\(job) (pid \(getpid()))"
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        return DomainLock(fd: fd)
    }
}

extension String {
    func trimmingCharacters() -> String {
        Substring(self).trimmingCharacters()
    }
}
