#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import KeelCPU
import KeelDomain

/// The JSON form of a message: one flat object with `protocol` and `type` and the fields of
/// that type. Unknown fields are ignored (a newer peer's optional data); a missing field the
/// type needs, an unknown type or a version below 1 is a protocol violation.
///
/// ```json
/// {"protocol": 2, "type": "begin", "versions": [2, 1],
///  "domain": {"name": "web-1", "uuid": "5e1f…"}, "host": {"name": "host-a", "uuid": "0b9d…"}}
/// {"protocol": 2, "type": "abort", "error": {"code": "incompatible-cpu", "message": "…",
///  "verdict": {"missing": [{"name": "avx2", "kind": "missing", "reason": "beyond this host's CPU ceiling",
///   "locations": [{"type": "cpuid", "leaf": 7, "subleaf": 0, "register": "ebx", "mask": 32}],
///   "bits": ["CPUID[eax=0x7,ecx=0x0].EBX bit 5"]}], "extra": [], "reasons": []}}}
/// ```
extension MigrationMessage {
    /// The message as UTF-8 JSON (keys sorted, so equal messages give equal bytes).
    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(WireMessage(self)))
    }

    /// Reads a message from UTF-8 JSON.
    ///
    /// - Throws: `MigrationError` `.protocolViolation` naming what is wrong.
    public init(json bytes: [UInt8]) throws {
        let wire: WireMessage
        do {
            wire = try JSONDecoder().decode(WireMessage.self, from: Data(bytes))
        } catch let error as MigrationError {
            throw error
        } catch {
            throw MigrationError(.protocolViolation, "malformed migration message: \(error)")
        }
        self = try wire.message()
    }
}

/// Length-prefixed frames on the peer channel: a 4-byte big-endian length, then that many bytes
/// of a JSON message. Frames larger than `maximumLength` are refused before any allocation.
public enum MigrationFrame {
    /// Far above a message with a persistent definition and a cookie (each capped at 4 MiB).
    public static let maximumLength = 16 << 20

    /// The frame carrying `message`.
    public static func encode(_ message: MigrationMessage) throws -> [UInt8] {
        let body = try message.encoded()
        guard body.count <= maximumLength else {
            throw MigrationError(.invalidArgument, "migration message of \(body.count) bytes exceeds the limit of \(maximumLength)")
        }
        let length = UInt32(body.count)
        return [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
    }

    /// Splits a byte stream into messages.
    public struct Decoder: Sendable {
        private var buffer: [UInt8] = []
        private var start = 0

        public init() {}

        /// Adds bytes read from the channel.
        public mutating func append(_ bytes: some Sequence<UInt8>) {
            buffer.append(contentsOf: bytes)
        }

        /// The next complete message, or nil when more bytes are needed.
        ///
        /// - Throws: `MigrationError` `.protocolViolation` for an oversized frame or a
        ///   malformed message; the channel should then be closed.
        public mutating func next() throws -> MigrationMessage? {
            guard buffer.count - start >= 4 else { return nil }
            let length = Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
            guard length <= MigrationFrame.maximumLength else {
                throw MigrationError(.protocolViolation, "migration frame of \(length) bytes exceeds the limit of \(MigrationFrame.maximumLength)")
            }
            guard buffer.count - start >= 4 + length else { return nil }
            let body = Array(buffer[(start + 4)..<(start + 4 + length)])
            start += 4 + length
            if start == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                start = 0
            } else if start > 1 << 16 {
                buffer.removeFirst(start)
                start = 0
            }
            return try MigrationMessage(json: body)
        }
    }
}

// MARK: - wire types

private struct WireMessage: Codable {
    var `protocol`: Int
    var type: String
    var versions: [Int]?
    var domain: WireIdentity?
    var host: WireIdentity?
    var xml: String?
    var cookie: String?
    var options: WireOptions?
    var uri: String?
    var verdict: WireVerdict?
    var resume: Bool?
    var running: Bool?
    var error: WireError?
    var state: String?
    var tlsStream: Bool?

    init(protocol version: Int, type: String) {
        self.protocol = version
        self.type = type
    }

    init(_ message: MigrationMessage) {
        self.init(protocol: message.version.rawValue, type: message.type)
        switch message.body {
        case .begin(let begin):
            versions = begin.versions.map(\.rawValue)
            domain = WireIdentity(name: begin.domain.name, uuid: begin.domain.uuid)
            host = WireIdentity(name: begin.host.name, uuid: begin.host.uuid)
        case .beginReply(let reply):
            versions = reply.versions.map(\.rawValue)
            host = WireIdentity(name: reply.host.name, uuid: reply.host.uuid)
        case .prepare(let prepare):
            xml = prepare.xml
            cookie = prepare.cookie
            options = WireOptions(prepare.options)
        case .prepareReply(let reply):
            cookie = reply.cookie
            uri = reply.uri
            verdict = reply.verdict.map(WireVerdict.init)
            if reply.tlsStream { tlsStream = true }
        case .perform, .confirm:
            break
        case .finish(let finish):
            cookie = finish.cookie
            resume = finish.resume
        case .finishReply(let reply):
            cookie = reply.cookie
            running = reply.running
        case .abort(let failure):
            error = WireError(failure)
        case .query(let identity):
            domain = WireIdentity(name: identity.name, uuid: identity.uuid)
        case .queryReply(let presence):
            state = presence.rawValue
        }
    }

    func message() throws -> MigrationMessage {
        guard self.protocol >= 1 else {
            throw MigrationError(.protocolViolation, "migration message of type '\(type)' has protocol version \(self.protocol)")
        }
        func need<T>(_ value: T?, _ field: String) throws -> T {
            guard let value else {
                throw MigrationError(.protocolViolation, "migration message '\(type)' lacks '\(field)'")
            }
            return value
        }
        let body: MigrationMessage.Body
        switch type {
        case "begin":
            body = .begin(.init(versions: try need(versions, "versions").map(MigrationProtocolVersion.init(rawValue:)),
                                domain: try need(domain, "domain").domain, host: try need(host, "host").host))
        case "begin-reply":
            body = .beginReply(.init(versions: try need(versions, "versions").map(MigrationProtocolVersion.init(rawValue:)),
                                     host: try need(host, "host").host))
        case "prepare":
            body = .prepare(.init(xml: try need(xml, "xml"), cookie: try need(cookie, "cookie"), options: try need(options, "options").options))
        case "prepare-reply":
            body = .prepareReply(.init(cookie: try need(cookie, "cookie"), uri: uri, verdict: try verdict?.verdict(), tlsStream: tlsStream ?? false))
        case "perform":
            body = .perform
        case "finish":
            body = .finish(.init(cookie: try need(cookie, "cookie"), resume: try need(resume, "resume")))
        case "finish-reply":
            body = .finishReply(.init(cookie: try need(cookie, "cookie"), running: try need(running, "running")))
        case "confirm":
            body = .confirm
        case "abort":
            body = .abort(try need(error, "error").error())
        case "query":
            body = .query(try need(domain, "domain").domain)
        case "query-reply":
            guard let presence = MigrationMessage.DomainPresence(rawValue: try need(state, "state")) else {
                throw MigrationError(.protocolViolation, "migration message 'query-reply' has unknown state '\(state ?? "")'")
            }
            body = .queryReply(presence)
        default:
            throw MigrationError(.protocolViolation, "unknown migration message type '\(type)'")
        }
        return MigrationMessage(MigrationProtocolVersion(rawValue: self.protocol), body)
    }
}

private struct WireIdentity: Codable {
    var name: String
    var uuid: String

    var domain: MigrationMessage.DomainIdentity { .init(name: name, uuid: uuid) }
    var host: MigrationMessage.HostIdentity { .init(name: name, uuid: uuid) }
}

private struct WireOptions: Codable {
    var live: Bool?
    var paused: Bool?
    var persistent: Bool?
    var dryRun: Bool?
    var tlsStream: Bool?

    init(_ options: MigrationOptions) {
        live = options.live
        paused = options.paused
        persistent = options.persistent
        dryRun = options.dryRun
        tlsStream = options.tlsStream
    }

    var options: MigrationOptions {
        MigrationOptions(live: live ?? true, paused: paused ?? false, persistent: persistent ?? false,
                         dryRun: dryRun ?? false, tlsStream: tlsStream ?? false)
    }
}

private struct WireError: Codable {
    var code: String
    var message: String
    var cookieFeature: String?
    var verdict: WireVerdict?

    init(_ error: MigrationError) {
        code = error.code.rawValue
        message = error.message
        cookieFeature = error.cookieFeature
        verdict = error.verdict.map(WireVerdict.init)
    }

    func error() throws -> MigrationError {
        MigrationError(MigrationError.Code(rawValue: code), message, cookieFeature: cookieFeature, verdict: try verdict?.verdict())
    }
}

private struct WireVerdict: Codable {
    var missing: [WireProblem]
    var extra: [WireProblem]
    var reasons: [String]

    init(_ verdict: CPUVerdict) {
        missing = verdict.missing.map(WireProblem.init)
        extra = verdict.extra.map(WireProblem.init)
        reasons = verdict.reasons
    }

    func verdict() throws -> CPUVerdict {
        CPUVerdict(missing: try missing.map { try $0.problem() }, extra: try extra.map { try $0.problem() }, reasons: reasons)
    }
}

private struct WireProblem: Codable {
    var name: String
    var kind: String
    var reason: String
    var locations: [WireLocation]
    /// The locations as text, for people reading the JSON; ignored when read.
    var bits: [String]?

    init(_ problem: CPUVerdict.Problem) {
        name = problem.feature.name
        kind = problem.feature.kind.rawValue
        reason = problem.reason
        locations = problem.feature.locations.map(WireLocation.init)
        bits = problem.feature.locations.map(\.description)
    }

    func problem() throws -> CPUVerdict.Problem {
        guard let kind = CPUFeatureProblem.Kind(rawValue: kind) else {
            throw MigrationError(.protocolViolation, "unknown CPU problem kind '\(kind)' for feature \(name)")
        }
        return CPUVerdict.Problem(
            feature: CPUFeatureProblem(name: name, kind: kind, locations: try locations.map { try $0.location() }),
            reason: reason
        )
    }
}

private struct WireLocation: Codable {
    var type: String
    var leaf: UInt32?
    var subleaf: UInt32?
    var index: UInt32?
    var register: String
    var mask: UInt32

    init(_ location: CPUFeatureLocation) {
        switch location {
        case .cpuid(let leaf, let subleaf, let register, let mask):
            type = "cpuid"
            self.leaf = leaf
            self.subleaf = subleaf
            self.register = register.rawValue
            self.mask = mask
        case .msr(let index, let register, let mask):
            type = "msr"
            self.index = index
            self.register = register.rawValue
            self.mask = mask
        }
    }

    func location() throws -> CPUFeatureLocation {
        guard let register = CPUFeatureLocation.Register(rawValue: register) else {
            throw MigrationError(.protocolViolation, "unknown register '\(register)' in a CPU feature location")
        }
        switch type {
        case "cpuid":
            return .cpuid(leaf: leaf ?? 0, subleaf: subleaf ?? 0, register: register, mask: mask)
        case "msr":
            guard let index else { throw MigrationError(.protocolViolation, "MSR location without an index") }
            return .msr(index: index, register: register, mask: mask)
        default:
            throw MigrationError(.protocolViolation, "unknown CPU feature location type '\(type)'")
        }
    }
}
