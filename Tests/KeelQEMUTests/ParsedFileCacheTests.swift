import Foundation
import KeelDomain
import KeelQEMU
import Testing

@Suite("parsed state files kept in memory")
struct ParsedFileCacheTests {
    /// Replaces `path` as the driver does: a new file renamed over the old one.
    static func replace(_ path: String, with text: String) throws {
        try text.write(toFile: path + ".new", atomically: false, encoding: .utf8)
        #expect(rename(path + ".new", path) == 0)
    }

    @Test("a file is parsed once while its text is unchanged, and again once it changed")
    func reuseUntilReplaced() throws {
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let path = directory.file("status.xml")
        try Self.replace(path, with: "one")
        let cache = ParsedFileCache()
        var parsed = 0
        func read() throws -> String? { try cache.value(path) { text in parsed += 1; return text.uppercased() } }
        #expect(try read() == "ONE")
        #expect(try read() == "ONE")
        #expect(parsed == 1)
        try Self.replace(path, with: "two")
        #expect(try read() == "TWO")
        #expect(parsed == 2)
        try Self.replace(path, with: "two")
        #expect(try read() == "TWO")
        #expect(parsed == 2, "the same text again needs no parse")
        try Self.replace(path, with: "twO")
        #expect(try read() == "TWO")
        #expect(parsed == 3, "same size, changed within the same clock tick: parsed again")
        #expect(cache.statistics.hits == 2 && cache.statistics.misses == 3)
    }

    @Test("a removed file reads as absent, and a file that does not parse fails on every read")
    func removedAndCorrupt() throws {
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let path = directory.file("domain.xml")
        let cache = ParsedFileCache()
        try Self.replace(path, with: "42")
        #expect(try cache.value(path) { Int($0) } == 42)
        unlink(path)
        #expect(try cache.value(path) { Int($0) } == nil)
        #expect(cache.count == 0)
        try Self.replace(path, with: "not a number")
        struct Corrupt: Error {}
        for _ in 0..<2 {
            #expect(throws: Corrupt.self) { try cache.value(path) { (text: String) -> Int in throw Corrupt() } }
        }
    }

    @Test("a store that caches sees definitions written by another process's store")
    func storeSeesOtherWriters() throws {
        let directory = try ProbeScratchDirectory()
        defer { directory.cleanup() }
        let cached = try DomainStore(root: directory.path, cache: ParsedFileCache())
        let other = try DomainStore(root: directory.path)
        func domain(_ memory: Int) throws -> DomainDefinition {
            try DomainDefinition(xmlString: """
                <domain type='qemu'><name>web</name><memory unit='KiB'>\(memory)</memory><vcpu>1</vcpu>\
                <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>
                """)
        }
        try other.save(try domain(16384))
        #expect(try cached.definition("web")?.formatted().contains("16384") == true)
        #expect(try cached.definition("web")?.formatted().contains("16384") == true)
        try other.save(try domain(32768))
        #expect(try cached.definition("web")?.formatted().contains("32768") == true)
        other.removeDefinition("web")
        #expect(try cached.definition("web") == nil)
        #expect(try cached.status("web") == nil)
    }
}
