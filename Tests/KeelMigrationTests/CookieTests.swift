import Foundation
import KeelCPU
import KeelDomain
import KeelMigration
import KeelXML
import Testing

@Suite("the migration cookie in libvirt 9.0's layout, with Keel's ABI record")
struct CookieTests {
    @Test("every fixture formats back byte for byte", arguments: try Fixtures.cookieNames())
    func roundTrip(name: String) throws {
        let text = try Fixtures.cookie(name)
        let cookie = try MigrationCookie(xmlString: text)
        #expect(cookie.formatted() == text)
        #expect(try MigrationCookie(xmlString: cookie.formatted()) == cookie)
    }

    @Test("libvirt's own cookie test data round-trips byte for byte (KEEL_LIBVIRT_SRC=libvirt-9.0.0 source tree)")
    func libvirtTestData() throws {
        guard let root = ProcessInfo.processInfo.environment["KEEL_LIBVIRT_SRC"] else {
            print("SKIP: KEEL_LIBVIRT_SRC is not set (a libvirt 9.0.0 source tree, e.g. from `apt-get source libvirt`); libvirt's tests/qemumigrationcookiexmldata is not checked")
            return
        }
        let directory = root + "/tests/qemumigrationcookiexmldata"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".xml") }.sorted()
        #expect(!names.isEmpty)
        for name in names {
            let text = try String(contentsOfFile: directory + "/" + name, encoding: .utf8)
            let cookie = try MigrationCookie(xmlString: text)
            #expect(cookie.formatted() == text, "\(name)")
        }
        print("checked \(names.count) cookies of libvirt's test data: \(names.joined(separator: ", "))")
    }

    @Test("the typed view reads libvirt's elements and keeps those Keel does not interpret in their slots")
    func typedView() throws {
        let cookie = try MigrationCookie(xmlString: try Fixtures.cookie("libvirt-full"))
        #expect(cookie.name == "web-1")
        #expect(cookie.hostname == "host-a.example")
        #expect(cookie.mandatory == [.lockState, .persistent, .memoryHotplug])
        #expect(cookie.mandatory.names == ["lockstate", "persistent", "memory-hotplug"])
        #expect(cookie.persistent?.name == "web-1")
        #expect(cookie.persistent?.cpu?.model == "pentium3")
        #expect(cookie.statistics?.delta == -12)
        #expect(cookie.statistics?.downtime == 37)
        #expect(cookie.statistics?.duplicates == .init(constant: 15000, normal: 2100, normalBytes: 8_601_600))
        #expect(cookie.statistics?.compression?.cacheMisses == 7)
        #expect(cookie.statistics?.autoConvergeThrottle == 20)
        #expect(cookie.cpu?.mode == .hostPassthrough)
        #expect(cookie.capabilities == [.init(name: "xbzrle", automatic: true), .init(name: "postcopy-ram", automatic: false)])
        #expect(cookie.uninterpreted.map(\.name) == ["graphics", "lockstate", "network", "nbd", "blockDirtyBitmaps"])
        #expect(cookie.abiRecord == nil)

        let finish = try MigrationCookie(xmlString: try Fixtures.cookie("libvirt-finish"))
        #expect(finish.statistics?.delta == nil)
        #expect(finish.statistics?.downtime == nil)
        #expect(finish.statistics?.duplicates == nil)
        #expect(finish.statistics?.compression == nil)
        #expect(finish.capabilities == nil)
        #expect(try MigrationCookie(xmlString: try Fixtures.cookie("libvirt-basic")).capabilities == [])
    }

    @Test("Keel's Begin cookie is built from the updated CPU and the ABI record exactly as the fixture")
    func keelBeginCookie() throws {
        var cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: Guest.hostA.name, hostUUID: Guest.hostA.uuid)
        cookie.cpu = try Guest.updatedCPU
        cookie.abiRecord = try Guest.abiRecord
        #expect(cookie.formatted() == (try Fixtures.cookie("keel-begin-v2")))
        let parsed = try MigrationCookie(xmlString: try Fixtures.cookie("keel-begin-v2"))
        #expect(parsed.abiRecord == (try Guest.abiRecord))
        #expect(parsed.cpu == (try Guest.updatedCPU))
    }

    @Test("Keel's Perform cookie marks the persistent definition mandatory")
    func keelPerformCookie() throws {
        let text = try Fixtures.cookie("keel-perform-persistent")
        let parsed = try MigrationCookie(xmlString: text)
        var cookie = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: Guest.hostA.name, hostUUID: Guest.hostA.uuid)
        cookie.mandatory = [.persistent]
        cookie.persistent = parsed.persistent
        cookie.statistics = parsed.statistics
        #expect(cookie.formatted() == text)
        try parsed.check(phase: .perform, name: "web-1", uuid: Guest.uuid, localHostUUID: Guest.hostB.uuid)
    }

    @Test("a mandatory feature the reader does not know is refused, naming it")
    func unknownMandatoryFeature() throws {
        let text = try Fixtures.cookie("libvirt-basic").replacingOccurrences(
            of: "  <capabilities>", with: "  <feature name='vtpm-state'/>\n  <capabilities>")
        let error = try #require(throws: MigrationError.self) { try MigrationCookie(xmlString: text) }
        #expect(error.code == .unsupported)
        #expect(error.cookieFeature == "vtpm-state")
        #expect(error.message == "Unknown migration cookie feature vtpm-state")
    }

    @Test("a feature without a name is refused with libvirt's message")
    func namelessFeature() throws {
        let text = try Fixtures.cookie("libvirt-basic").replacingOccurrences(of: "  <capabilities>", with: "  <feature/>\n  <capabilities>")
        let error = try #require(throws: MigrationError.self) { try MigrationCookie(xmlString: text) }
        #expect(error.message == "missing feature name")
    }

    @Test("a known mandatory feature Keel cannot honour in the phase is refused, naming it")
    func unsupportedInPhase() throws {
        let begin = try MigrationCookie(xmlString: try Fixtures.cookie("libvirt-begin-cpu"))
        let error = try #require(throws: MigrationError.self) {
            try begin.check(phase: .begin, name: "db-2", uuid: "8c0a4a3e-2f57-4d0b-9d6e-0f3b1e7a5c21", localHostUUID: Guest.hostB.uuid)
        }
        #expect(error.message == "Unsupported migration cookie feature lockstate")
        #expect(error.cookieFeature == "lockstate")

        var persistent = MigrationCookie(name: "web-1", uuid: Guest.uuid, hostname: "a", hostUUID: Guest.hostA.uuid)
        persistent.mandatory = [.persistent]
        // persistent is mandatory data of Perform only.
        #expect(refusal {
            try persistent.check(phase: .begin, name: "web-1", uuid: Guest.uuid, localHostUUID: Guest.hostB.uuid)
        }?.message == "Unsupported migration cookie feature persistent")
        try persistent.check(phase: .perform, name: "web-1", uuid: Guest.uuid, localHostUUID: Guest.hostB.uuid)
    }

    @Test("unknown optional elements are ignored: read, kept, and written after libvirt's")
    func unknownOptional() throws {
        let text = try Fixtures.cookie("libvirt-begin-cpu")
            .replacingOccurrences(of: "  <feature name='lockstate'/>\n", with: "")
            .replacingOccurrences(of: "  <cpu mode=", with: "  <vtpm-state blob='AAAA'/>\n  <x:later xmlns:x='urn:example:later'>data</x:later>\n  <cpu mode=")
        let cookie = try MigrationCookie(xmlString: text)
        try cookie.check(phase: .begin, name: "db-2", uuid: "8c0a4a3e-2f57-4d0b-9d6e-0f3b1e7a5c21", localHostUUID: Guest.hostB.uuid)
        #expect(cookie.cpu?.model == "Haswell-noTSX-IBRS")
        #expect(cookie.unknownElements.map(\.name) == ["vtpm-state", "x:later"])
        let formatted = cookie.formatted()
        #expect(formatted.hasSuffix("  </capabilities>\n  <vtpm-state blob='AAAA'/>\n  <x:later xmlns:x='urn:example:later'>data</x:later>\n</qemu-migration>\n"))
    }

    @Test("a reader that does not know <cpu> reads the cookie without it (the older peer's view)")
    func olderReader() throws {
        // libvirt's rule: <cpu> is optional and never mandatory, so a Keel cookie carries no
        // <feature> an older reader would have to refuse.
        let cookie = try MigrationCookie(xmlString: try Fixtures.cookie("keel-begin-v2"))
        #expect(cookie.mandatory.isEmpty)
        try cookie.check(phase: .begin, name: "web-1", uuid: Guest.uuid, localHostUUID: Guest.hostB.uuid)
        let incoming = IncomingCPU(original: try Guest.definition.cpu, sideChannel: nil, abiRecord: nil)
        #expect(incoming.pinned == nil)
        #expect(incoming.target == (try Guest.definition.cpu))
    }

    @Test("identity checks use libvirt's messages", arguments: [
        ("other", Guest.uuid, Guest.hostB.uuid, "Incoming cookie data had unexpected name web-1 vs other"),
        ("web-1", "00000000-0000-0000-0000-000000000001", Guest.hostB.uuid,
         "Incoming cookie data had unexpected UUID 5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4 vs 00000000-0000-0000-0000-000000000001"),
        ("web-1", Guest.uuid, Guest.hostA.uuid.uppercased(), "Attempt to migrate guest to the same host 0b9d6f1e-2c3a-4b5d-8e7f-901a2b3c4d5e"),
    ])
    func identity(name: String, uuid: String, localHost: String, message: String) throws {
        let cookie = try MigrationCookie(xmlString: try Fixtures.cookie("keel-begin-v2"))
        #expect(refusal {
            try cookie.check(phase: .begin, name: name, uuid: uuid, localHostUUID: localHost)
        }?.message == message)
    }

    @Test("malformed cookies are refused with libvirt's messages", arguments: [
        ("<name>web-1</name>", "", "missing name element in migration data"),
        ("<hostname>host-a</hostname>", "<hostname></hostname>", "missing hostname element in migration data"),
        ("<hostuuid>0b9d6f1e-2c3a-4b5d-8e7f-901a2b3c4d5e</hostuuid>", "", "missing hostuuid element in migration data"),
        ("<hostuuid>0b9d6f1e-2c3a-4b5d-8e7f-901a2b3c4d5e</hostuuid>", "<hostuuid>not-a-uuid</hostuuid>", "malformed hostuuid element in migration data"),
        ("<uuid>5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4</uuid>", "", "missing uuid element in migration data"),
    ])
    func malformed(replace: String, with replacement: String, message: String) throws {
        let text = try Fixtures.cookie("keel-begin-v2").replacingOccurrences(of: replace, with: replacement)
        #expect(refusal { try MigrationCookie(xmlString: text) }?.message == message)
    }

    @Test("two persistent definitions are refused")
    func twoDomains() throws {
        let text = try Fixtures.cookie("keel-perform-persistent")
        let start = try #require(text.range(of: "  <domain"))
        let end = try #require(text.range(of: "  </domain>\n"))
        let domain = String(text[start.lowerBound..<end.upperBound])
        #expect(refusal {
            try MigrationCookie(xmlString: text.replacingOccurrences(of: "  <statistics>", with: domain + "  <statistics>"))
        }?.message == "Too many domain elements in migration cookie")
    }

    @Test("on libvirt's wire the cookie is NUL-terminated, and a cookie without the NUL is refused")
    func nulTerminated() throws {
        let cookie = try MigrationCookie(xmlString: try Fixtures.cookie("libvirt-basic"))
        #expect(cookie.wireBytes.last == 0)
        #expect(try MigrationCookie(wireBytes: cookie.wireBytes) == cookie)
        #expect(refusal {
            try MigrationCookie(wireBytes: Array(cookie.formatted().utf8))
        }?.message == "Migration cookie was not NULL terminated")
    }

    @Test("every flag keeps libvirt's bit and wire name")
    func flags() {
        #expect(MigrationCookie.Features(name: "graphics")?.rawValue == 1 << 0)
        #expect(MigrationCookie.Features(name: "cpu")?.rawValue == 1 << 8)
        #expect(MigrationCookie.Features(name: "allowReboot")?.rawValue == 1 << 9)
        #expect(MigrationCookie.Features(name: "block-dirty-bitmaps")?.rawValue == 1 << 11)
        #expect(MigrationCookie.Features(name: "unknown") == nil)
        #expect(MigrationCookie.Phase.allCases.allSatisfy { !$0.readable.contains(.lockState) })
    }
}

/// The `MigrationError` `body` throws, or nil.
func refusal<T>(_ body: () throws -> T) -> MigrationError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error as? MigrationError
    }
}
