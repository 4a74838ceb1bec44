import KeelDomain

/// One message between the source and the destination `keeld`, stamped with the protocol
/// version it is written in. The JSON form is in `MigrationMessage+JSON.swift` and
/// `docs/protocols/migration.md`.
///
/// | type | direction | meaning |
/// |---|---|---|
/// | `begin` | source → destination | the versions the source speaks, the domain, the source host |
/// | `begin-reply` | destination → source | the version chosen (in `protocol`), the destination host |
/// | `prepare` | source → destination | the domain XML (original CPU), the Begin cookie, the options |
/// | `prepare-reply` | destination → source | the Prepare cookie and the URI QEMU listens on (none for a dry run) |
/// | `perform` | source → destination | QEMU's stream has started |
/// | `finish` | source → destination | the stream completed; the Perform cookie; whether to resume |
/// | `finish-reply` | destination → source | the destination owns the guest; the Finish cookie |
/// | `confirm` | source → destination | the source's QEMU is stopped |
/// | `abort` | either | the sender holds nothing of the guest any more, and why |
/// | `query` | source → destination | on a new connection: does the destination hold the domain? |
/// | `query-reply` | destination → source | running, paused, incoming or absent |
///
/// `abort` is the only way to say "failed": from the destination it means its QEMU is killed and
/// no definition is left; from the source, that the guest stays (or is resumed) on the source.
public struct MigrationMessage: Sendable, Hashable {
    public var version: MigrationProtocolVersion
    public var body: Body

    public init(_ version: MigrationProtocolVersion, _ body: Body) {
        self.version = version
        self.body = body
    }

    public enum Body: Sendable, Hashable {
        case begin(Begin)
        case beginReply(BeginReply)
        case prepare(Prepare)
        case prepareReply(PrepareReply)
        case perform
        case finish(Finish)
        case finishReply(FinishReply)
        case confirm
        case abort(MigrationError)
        case query(DomainIdentity)
        case queryReply(DomainPresence)
    }

    /// The wire name of the message's type.
    public var type: String {
        switch body {
        case .begin: "begin"
        case .beginReply: "begin-reply"
        case .prepare: "prepare"
        case .prepareReply: "prepare-reply"
        case .perform: "perform"
        case .finish: "finish"
        case .finishReply: "finish-reply"
        case .confirm: "confirm"
        case .abort: "abort"
        case .query: "query"
        case .queryReply: "query-reply"
        }
    }

    /// A domain as both sides name it.
    public struct DomainIdentity: Sendable, Hashable {
        public var name: String
        public var uuid: String

        public init(name: String, uuid: String) {
            self.name = name
            self.uuid = uuid
        }
    }

    /// A host: its name and its host UUID (a destination refuses its own UUID).
    public struct HostIdentity: Sendable, Hashable {
        public var name: String
        public var uuid: String

        public init(name: String, uuid: String) {
            self.name = name
            self.uuid = uuid
        }
    }

    /// The source's offer. `version` of the message is the source's highest.
    public struct Begin: Sendable, Hashable {
        public var versions: [MigrationProtocolVersion]
        public var domain: DomainIdentity
        public var host: HostIdentity

        public init(versions: [MigrationProtocolVersion], domain: DomainIdentity, host: HostIdentity) {
            self.versions = versions
            self.domain = domain
            self.host = host
        }
    }

    /// The destination's answer. `version` of the message is the version chosen.
    public struct BeginReply: Sendable, Hashable {
        public var versions: [MigrationProtocolVersion]
        public var host: HostIdentity

        public init(versions: [MigrationProtocolVersion], host: HostIdentity) {
            self.versions = versions
            self.host = host
        }
    }

    public struct Prepare: Sendable, Hashable {
        /// The domain XML with the original CPU (libvirt's migratable XML).
        public var xml: String
        /// The Begin cookie.
        public var cookie: String
        public var options: MigrationOptions

        public init(xml: String, cookie: String, options: MigrationOptions) {
            self.xml = xml
            self.cookie = cookie
            self.options = options
        }
    }

    public struct PrepareReply: Sendable, Hashable {
        /// The Prepare cookie (the destination's identity).
        public var cookie: String
        /// Where the destination QEMU listens (`tcp:HOST:PORT`); nil for a dry run.
        public var uri: String?
        /// The destination's CPU verdict (always acceptable here: a refusal is an `abort`).
        public var verdict: CPUVerdict?
        /// The destination's QEMU accepts the stream only over TLS (QEMU's `tls-creds`). A
        /// destination that does not know the option never says so, and the source refuses.
        public var tlsStream: Bool

        public init(cookie: String, uri: String?, verdict: CPUVerdict? = nil, tlsStream: Bool = false) {
            self.cookie = cookie
            self.uri = uri
            self.verdict = verdict
            self.tlsStream = tlsStream
        }
    }

    public struct Finish: Sendable, Hashable {
        /// The Perform cookie: statistics, and the persistent definition when requested.
        public var cookie: String
        /// Whether the destination resumes the guest (it ran on the source and `paused` was not
        /// asked for).
        public var resume: Bool

        public init(cookie: String, resume: Bool) {
            self.cookie = cookie
            self.resume = resume
        }
    }

    public struct FinishReply: Sendable, Hashable {
        /// The Finish cookie: statistics.
        public var cookie: String
        /// Whether the guest runs on the destination (else it is paused there).
        public var running: Bool

        public init(cookie: String, running: Bool) {
            self.cookie = cookie
            self.running = running
        }
    }

    /// What a destination holds of a domain, answering `query`.
    public enum DomainPresence: String, Sendable, Hashable {
        /// The destination owns the guest and it runs.
        case running
        /// The destination owns the guest, paused.
        case paused
        /// An incoming QEMU exists, the destination has not taken the guest over.
        case incoming
        /// Nothing: no QEMU, no definition from a migration.
        case absent
    }
}

/// What the user asked for that the destination must know.
public struct MigrationOptions: Sendable, Hashable {
    /// Keep the guest running during the transfer (else it is paused first).
    public var live: Bool
    /// Leave the guest paused on the destination.
    public var paused: Bool
    /// Define the domain persistently on the destination.
    public var persistent: Bool
    /// Only ask the destination for its verdict.
    public var dryRun: Bool
    /// Carry QEMU's stream over TLS.
    public var tlsStream: Bool

    public init(live: Bool = true, paused: Bool = false, persistent: Bool = false, dryRun: Bool = false, tlsStream: Bool = false) {
        self.live = live
        self.paused = paused
        self.persistent = persistent
        self.dryRun = dryRun
        self.tlsStream = tlsStream
    }
}
