import Foundation
import KeelXML
import Testing

@Suite("XML parsing and libvirt-style formatting")
struct XMLTests {
    static let domain = """
        <domain type='kvm' xmlns:keel='https://keel.dev/xmlns/abi/1'>
          <name>web-1</name>
          <uuid>5e1f1c52-8f0e-4a5b-9a0c-33c6a2f9b7d4</uuid>
          <description>a &lt;fast&gt; &amp; &apos;quoted&apos; &quot;guest&quot;</description>
          <metadata>
            <keel:abi version='1'>
              <keel:qemu version='7.2.22'/>
            </keel:abi>
          </metadata>
          <memory unit='KiB'>65536</memory>
          <os>
            <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
            <boot dev='hd'/>
          </os>
          <cpu mode='custom' match='exact' check='partial'>
            <model fallback='forbid'>pentium3</model>
            <unknown-element attr='kept'/>
          </cpu>
          <devices>
            <serial type='file'>
              <source path='/tmp/serial.log'/>
            </serial>
          </devices>
        </domain>

        """

    @Test("a libvirt-formatted document survives parse → format byte for byte, unknown and namespaced elements included")
    func roundTrip() throws {
        let root = try XMLParser.parse(Self.domain)
        #expect(root.formatted() == Self.domain)
        #expect(root.child("metadata")?.child("keel:abi")?.child("keel:qemu")?.attribute("version") == "7.2.22")
        #expect(root.child("cpu")?.child("unknown-element")?.attribute("attr") == "kept")
    }

    @Test("other layouts are reformatted into libvirt's: two-space indent, single quotes, self-closing empty elements")
    func reformat() throws {
        let root = try XMLParser.parse("<?xml version=\"1.0\"?>\n<a  x=\"1\"><b></b>\n\n   <c y=\"it's\">t</c><!-- gone --></a>")
        #expect(root.formatted() == "<a x='1'>\n  <b/>\n  <c y='it&apos;s'>t</c>\n</a>\n")
    }

    @Test("control characters other than tab, newline and return are dropped when formatting, as libvirt does")
    func controlCharacters() {
        let element = XMLElement("a", text: "x\u{1}y\tz")
        #expect(element.formatted() == "<a>xy\tz</a>\n")
    }

    @Test("DOCTYPE declarations are refused, which stops entity bombs and external entities")
    func doctypeRefused() {
        let bomb = """
            <?xml version="1.0"?>
            <!DOCTYPE lolz [
             <!ENTITY lol "lol">
             <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
             <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
             <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
            ]>
            <cpu><model>&lol4;</model></cpu>
            """
        #expect(throws: XMLError.self) { try XMLParser.parse(bomb) }
        do {
            _ = try XMLParser.parse(bomb)
        } catch let error as XMLError {
            #expect(error.code == .forbiddenConstruct)
        } catch {
            Issue.record("unexpected error \(error)")
        }
        let external = "<!DOCTYPE cpu SYSTEM \"http://example.invalid/x.dtd\"><cpu/>"
        #expect(throws: XMLError.self) { try XMLParser.parse(external) }
    }

    @Test("malformed XML reports the line of the problem")
    func malformedLine() {
        do {
            _ = try XMLParser.parse("<cpu>\n  <model>x</model>\n  <feature name='a'>\n</cpu>")
            Issue.record("parsed malformed XML")
        } catch let error as XMLError {
            #expect(error.code == .malformed)
            #expect(error.line == 4)
            #expect(error.description.hasPrefix("malformed XML at line 4:"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    /// Named inputs; the names alone are the test arguments, so the log stays readable.
    static let badInputs: [String: [UInt8]] = [
        "empty": [],
        "whitespace": Array("  \n".utf8),
        "nul": Array("<a>\0</a>".utf8),
        "garbage": (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) },
    ]

    @Test("oversized, empty and binary input are refused before or by the parser", arguments: ["empty", "whitespace", "nul", "garbage"])
    func badInput(name: String) throws {
        let bytes = try #require(Self.badInputs[name])
        #expect(throws: XMLError.self, "\(name)") { try XMLParser.parse(bytes) }
    }

    @Test("the size cap is checked before parsing")
    func sizeCap() {
        let big = [UInt8](repeating: 0x20, count: 2048)
        do {
            _ = try XMLParser.parse(big, maximumSize: 1024)
            Issue.record("parsed oversized input")
        } catch let error as XMLError {
            #expect(error.code == .tooLarge)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("attribute editing keeps order and replaces in place")
    func attributes() {
        var element = XMLElement("cpu", attributes: [XMLAttribute("mode", "custom"), XMLAttribute("match", "exact")])
        element.setAttribute("mode", "host-model")
        element.setAttribute("check", "full")
        element.setAttribute("match", nil)
        #expect(element.formatted() == "<cpu mode='host-model' check='full'/>\n")
    }
}
