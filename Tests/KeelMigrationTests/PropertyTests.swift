import KeelMigration
import Testing

/// A small deterministic generator (SplitMix64), so property tests are reproducible by seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("seeded properties of the cookie and message readers")
struct PropertyTests {
    /// Flips, drops, duplicates and inserts bytes.
    static func mutate(_ bytes: [UInt8], _ generator: inout SeededGenerator) -> [UInt8] {
        var result = bytes
        for _ in 0..<Int.random(in: 1...4, using: &generator) where !result.isEmpty {
            let index = Int.random(in: 0..<result.count, using: &generator)
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: result[index] ^= UInt8.random(in: 1...255, using: &generator)
            case 1: result.remove(at: index)
            case 2: result.insert(result[index], at: index)
            default: result.insert(Array("<>'/= \"&x".utf8).randomElement(using: &generator) ?? 0x3C, at: index)
            }
        }
        return result
    }

    /// What Keel interprets of a cookie. Raw subtrees (the persistent domain's, kept elements) are
    /// left out: a mutation can put text between elements, and mixed content is not normalized
    /// by the formatter.
    static func interpreted(_ cookie: MigrationCookie) -> [String] {
        [cookie.name, cookie.uuid, cookie.hostname, cookie.hostUUID, "\(cookie.mandatory.rawValue)",
         cookie.persistent?.name ?? "-", cookie.statistics.map { $0.xmlElement.formatted() } ?? "-",
         cookie.cpu?.formatted() ?? "-", "\(cookie.capabilities ?? [])", cookie.abiRecord?.xmlElement.formatted() ?? "-"]
    }

    @Test("a mutated cookie is refused with a MigrationError, or read, formatted and read again to the same meaning", arguments: try Fixtures.cookieNames())
    func cookieMutations(name: String) throws {
        let original = Array(try Fixtures.cookie(name).utf8)
        var generator = SeededGenerator(state: 0xC00C1E ^ UInt64(name.utf8.count))
        var accepted = 0
        for _ in 0..<400 {
            let text = String(decoding: Self.mutate(original, &generator), as: UTF8.self)
            do {
                let cookie = try MigrationCookie(xmlString: text)
                let again = try MigrationCookie(xmlString: cookie.formatted())
                #expect(Self.interpreted(again) == Self.interpreted(cookie), "seed state \(generator.state)")
                accepted += 1
            } catch is MigrationError {
                continue
            }
        }
        #expect(accepted > 0)
    }

    @Test("a mutated frame stream yields messages or a protocol violation, never anything else")
    func frameMutations() throws {
        var stream: [UInt8] = []
        for message in MessageTests.messages { stream += try MigrationFrame.encode(message) }
        var generator = SeededGenerator(state: 0xF7A3E)
        for _ in 0..<300 {
            var decoder = MigrationFrame.Decoder()
            decoder.append(Self.mutate(stream, &generator))
            do {
                while let message = try decoder.next() {
                    #expect(try MigrationMessage(json: message.encoded()) == message)
                }
            } catch let error as MigrationError {
                #expect(error.code == .protocolViolation)
            }
        }
    }
}
