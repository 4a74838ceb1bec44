import KeelQMP
import Testing

@Suite("QMP.Value JSON")
struct JSONValueTests {
    @Test("decode(encode(x)) == x for every kind of value")
    func roundTrip() throws {
        let value: QMP.Value = [
            "null": nil, "true": true, "false": false,
            "int": -42, "big": .uint(18_446_744_073_709_551_615), "min": .int(Int64.min),
            "double": 0.5, "tiny": 1e-5, "integral": 2.0,
            "string": "a \"quoted\" \\ line\nwith\ttabs, \u{01} control, é and 🦀",
            "array": [1, "two", [3.5], [:]],
            "object": ["nested": ["deeper": []]],
        ]
        #expect(try QMP.Value(parsing: value.jsonString()) == value)
    }

    @Test("integers stay integers: Int64 range as int, above it as uint, beyond 64 bits as double")
    func integerRanges() throws {
        #expect(try QMP.Value(parsing: "9223372036854775807") == .int(Int64.max))
        #expect(try QMP.Value(parsing: "9223372036854775808") == .uint(9_223_372_036_854_775_808))
        #expect(try QMP.Value(parsing: "-9223372036854775808") == .int(Int64.min))
        #expect(try QMP.Value(parsing: "18446744073709551616") == .double(18_446_744_073_709_551_616))
        #expect(try QMP.Value(parsing: "1.0") == .double(1))
        #expect(try QMP.Value(parsing: "-0") == .int(0))
        #expect(try QMP.Value(parsing: "2147483656").uint64Value == 0x8000_0008)
    }

    @Test("escapes decode, including surrogate pairs; a lone surrogate becomes U+FFFD")
    func escapes() throws {
        #expect(try QMP.Value(parsing: #""\u00e9\n\/\"\\\b\f\r\t""#) == .string("é\n/\"\\\u{08}\u{0C}\r\t"))
        #expect(try QMP.Value(parsing: #""\ud83e\udd80""#) == .string("🦀"))
        #expect(try QMP.Value(parsing: #""\ud83e x""#) == .string("\u{FFFD} x"))
        #expect(QMP.Value.string("\u{7F}\u{1F}").jsonString() == #""\u007f\u001f""#)
    }

    @Test("malformed documents are protocol violations", arguments: [
        "", "{", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "tru", "01", "1.", "-", "\"unterminated",
        "\"bad \\x escape\"", "\"\u{01}\"", "[1] 2", "{1:2}", "nul", "[\"\\u12\"]",
    ])
    func malformed(text: String) {
        #expect(throws: QMP.Error.self) { try QMP.Value(parsing: text) }
    }

    @Test("invalid UTF-8 inside a string is refused")
    func invalidUTF8() {
        #expect(throws: QMP.Error.self) { try QMP.Value(parsing: [0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test("nesting beyond the limit is refused instead of exhausting the stack")
    func depthLimit() throws {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: QMP.Error.self) { try QMP.Value(parsing: deep) }
        let shallow = String(repeating: "[", count: 10) + String(repeating: "]", count: 10)
        #expect(try QMP.Value(parsing: shallow, limits: .init(maximumDepth: 10)).arrayValue?.count == 1)
    }

    @Test("accessors read members, elements and numbers")
    func accessors() throws {
        let value = try QMP.Value(parsing: #"{"a":[{"b":7}],"s":"x","f":1.5,"t":true}"#)
        #expect(value["a"]?[0]?["b"]?.intValue == 7)
        #expect(value["a"]?[1] == nil)
        #expect(value["s"]?.stringValue == "x")
        #expect(value["f"]?.doubleValue == 1.5)
        #expect(value["f"]?.intValue == nil)
        #expect(value["t"]?.boolValue == true)
        #expect(value["missing"] == nil)
    }

    @Test("every line of every recorded transcript parses and re-encodes to the same value")
    func transcriptsParse() throws {
        let transcripts = try Transcript.all()
        #expect(!transcripts.isEmpty)
        for transcript in transcripts {
            for record in transcript.records {
                #expect(try QMP.Value(parsing: record.line) == record.message)
            }
        }
    }
}

@Suite("QMP.LineFramer")
struct LineFramerTests {
    @Test("lines split across reads come out whole, CRLF or LF, empty lines skipped")
    func splitting() throws {
        var framer = QMP.LineFramer()
        #expect(try framer.append(Array("{\"a\":".utf8)).isEmpty)
        #expect(try framer.append(Array("1}\r\n\r\n{\"b\"".utf8)) == [Array("{\"a\":1}".utf8)])
        #expect(framer.bufferedByteCount == 4)
        #expect(try framer.append(Array(":2}\n{}\r".utf8)) == [Array("{\"b\":2}".utf8)])
        #expect(try framer.append(Array("\n".utf8)) == [Array("{}".utf8)])
        #expect(framer.bufferedByteCount == 0)
    }

    @Test("a line longer than the limit is a protocol violation, complete or not")
    func overlong() {
        #expect(throws: QMP.Error.self) {
            var partial = QMP.LineFramer(maximumLineLength: 8)
            _ = try partial.append(Array("123456789".utf8))
        }
        #expect(throws: QMP.Error.self) {
            var complete = QMP.LineFramer(maximumLineLength: 8)
            _ = try complete.append(Array("123456789\n".utf8))
        }
        var fine = QMP.LineFramer(maximumLineLength: 8)
        #expect((try? fine.append(Array("12345678\r\n".utf8))) == [Array("12345678".utf8)])
    }
}
