import Foundation
import KeelTestSupport
import KeelCPU
import KeelDomain
import KeelSaveImage
import Testing

/// Images and helpers for the `keel save-image` tests.
enum SaveImageSamples {
    static let fixtures = Keel.repository.appendingPathComponent("Tests/KeelSaveImageTests/Fixtures")

    static func fixture(_ name: String) -> String {
        fixtures.appendingPathComponent(name).path
    }

    static func text(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8)
    }

    static func bytes(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// A fresh directory under the system's temporary directory.
    static func directory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("keel-save-image-cli-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    /// A copy of a libvirt fixture that a test may modify.
    static func copy(_ name: String, into directory: String) throws -> String {
        let path = directory + "/" + name
        try FileManager.default.copyItem(atPath: fixture(name), toPath: path)
        return path
    }

    /// The start of a QEMU migration stream (`QEVM`, version 3) followed by deterministic bytes.
    static func stream(count: Int) -> [UInt8] {
        var out: [UInt8] = [0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3]
        var state: UInt64 = 7
        while out.count < count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            out.append(contentsOf: repeatElement(UInt8(truncatingIfNeeded: state >> 33), count: min(16, count - out.count)))
        }
        return out
    }

    static let domainXML = """
        <domain type='kvm'>
          <name>keel-written</name>
          <uuid>6b0d6c52-6b1c-4c8f-9a57-3c1f4c0e2d11</uuid>
          <memory unit='KiB'>65536</memory>
          <vcpu placement='static'>1</vcpu>
          <os>
            <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
          </os>
          <cpu mode='custom' match='exact' check='partial'>
            <model fallback='forbid'>qemu64</model>
            <feature policy='disable' name='vmx'/>
          </cpu>
          <devices>
            <emulator>/usr/bin/qemu-system-x86_64</emulator>
            <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/>
          </devices>
        </domain>

        """

    /// Writes an image the way `keel save` does: original CPU in the XML, updated CPU and an ABI
    /// record in the cookie. Without `finish` the image stays incomplete.
    @discardableResult
    static func writeKeelImage(
        _ path: String, compression: SaveImageCompression = .raw, streamBytes: Int = 256 << 10, finish: Bool = true
    ) throws -> SaveImageWriter {
        let requested = try CPUDefinition(xmlString: """
            <cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model>
            <feature policy='disable' name='vmx'/></cpu>
            """, as: .guest)
        let effective = try CPUDefinition(xmlString: """
            <cpu mode='custom' match='exact' check='full'><model fallback='forbid'>qemu64</model>
            <feature policy='require' name='hypervisor'/><feature policy='disable' name='svm'/>
            <feature policy='forbid' name='vmx'/></cpu>
            """, as: .guest)
        let record = ABIRecord(
            requestedCPU: requested, effectiveCPU: effective,
            cpuidWords: [
                CPUIDWord(leaf: 1, register: .ecx, value: 0x8020_2001),
                CPUIDWord(leaf: 0x8000_0001, register: .ecx, value: 0x1),
                CPUIDWord(leaf: 7, register: .ebx, value: 0),
            ],
            qemuVersion: "7.2.22", accelerator: "kvm", machine: "pc-i440fx-7.2", managerVersion: "0.1.0",
            host: ABIRecord.Host(signature: "6/94/3", microcode: "0xf0", kernel: "6.1.0-test")
        )
        let cookie = SaveCookie(cpu: effective, slirpHelper: true, abiRecord: record)
        let writer = try SaveImageWriter(
            path: path, dataArea: SaveImageDataArea(xml: domainXML, cookie: cookie.formatted()),
            wasRunning: true, compression: compression
        )
        try writer.write(stream(count: streamBytes))
        if finish {
            try writer.finish()
        }
        return writer
    }

    static var hasGzip: Bool {
        ["/usr/bin/gzip", "/bin/gzip"].contains(where: FileManager.default.isExecutableFile)
    }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    /// Checks the CLI's error contract: nothing on stdout, one `error:` line on stderr, exit 1.
    static func expectOneLineError(_ result: Keel.Result, containing expected: String, _ context: String = "", sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "\(context): \(result.stdout) \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty, "\(context): \(result.stdout)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("error: "), "\(context): \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.filter { $0 == "\n" }.count == 1, "\(context): not one line: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(expected), "\(context): \(result.stderr)", sourceLocation: sourceLocation)
    }
}

@Suite("keel save-image info")
struct SaveImageInfoCLITests {
    @Test("info shows libvirt's header, the updated CPU from its cookie and the difference with CPUID bits", arguments: [
        ("libvirt-9.0-raw.save", "raw (0)"), ("libvirt-9.0-gzip.save", "gzip (1)"),
    ])
    func libvirtFixture(name: String, compression: String) throws {
        let result = try Keel.run(["save-image", "info", SaveImageSamples.fixture(name)])
        #expect(result.status == 0, "\(result.stderr)")
        let out = result.stdout
        for line in [
            "Complete:       yes", "Version:        2", "Data length:    66539", "Was running:    yes",
            "Compression:    \(compression)", "Cookie offset:  767", "Stream offset:  66631",
            "Byte order:     little-endian", "Domain:         keel-fixture",
            "check: partial -> full", "+ hypervisor  CPUID[eax=0x1,ecx=0x0].ECX bit 31",
            "ABI record: none",
        ] {
            #expect(out.contains(line), "missing \(line) in\n\(out)")
        }
        // Original from the domain XML, updated from the cookie, in that order.
        let original = try #require(out.range(of: "Original CPU (domain XML):\n  <cpu mode='custom' match='exact' check='partial'>"))
        let updated = try #require(out.range(of: "Updated CPU (save cookie):\n  <cpu mode='custom' match='exact' check='full'>"))
        #expect(original.lowerBound < updated.lowerBound)
        #expect(out.contains("    <feature policy='require' name='lahf_lm'/>"))
    }

    @Test("with libvirt's own CPU map, lahf_lm (not part of libvirt's qemu64) is an added feature too")
    func libvirtMap() throws {
        guard Keel.hasLibvirtMap else {
            print("SKIP: libvirt's cpu_map is not installed; the difference is only checked with the built-in map")
            return
        }
        let result = try Keel.run(["save-image", "info", SaveImageSamples.fixture("libvirt-9.0-raw.save"), "--cpu-map", Keel.libvirtMap])
        #expect(result.status == 0)
        #expect(result.stdout.contains("+ hypervisor  CPUID[eax=0x1,ecx=0x0].ECX bit 31\n"))
        #expect(result.stdout.contains("+ lahf_lm     CPUID[eax=0x80000001,ecx=0x0].ECX bit 0\n"))
    }

    @Test("info --json has every documented key, CPUs as XML strings and the difference")
    func json() throws {
        let result = try Keel.run(["save-image", "info", "--json", SaveImageSamples.fixture("libvirt-9.0-gzip.save")])
        #expect(result.status == 0)
        let object = try SaveImageSamples.json(result.stdout)
        for key in ["complete", "version", "dataLength", "wasRunning", "compression", "cookieOffset", "streamOffset", "byteOrder", "domain", "cpu", "abiRecord"] {
            #expect(object.keys.contains(key), "missing \(key)")
        }
        #expect(object["complete"] as? Bool == true)
        #expect(object["dataLength"] as? Int == 66539)
        #expect(object["streamOffset"] as? Int == 66631)
        #expect(object["byteOrder"] as? String == "little-endian")
        let compression = try #require(object["compression"] as? [String: Any])
        #expect(compression["name"] as? String == "gzip")
        #expect(compression["value"] as? Int == 1)
        let domain = try #require(object["domain"] as? [String: Any])
        #expect(domain["name"] as? String == "keel-fixture")
        let cpu = try #require(object["cpu"] as? [String: Any])
        #expect((cpu["original"] as? String)?.hasPrefix("<cpu mode='custom' match='exact' check='partial'>") == true)
        #expect((cpu["updated"] as? String)?.contains("name='hypervisor'") == true)
        let difference = try #require(cpu["difference"] as? [String: Any])
        let added = try #require(difference["added"] as? [[String: Any]])
        #expect(added.contains { $0["name"] as? String == "hypervisor" && ($0["bits"] as? [String]) == ["CPUID[eax=0x1,ecx=0x0].ECX bit 31"] })
        let fields = try #require(difference["fields"] as? [[String: Any]])
        #expect(fields.contains { $0["field"] as? String == "check" && $0["original"] as? String == "partial" && $0["updated"] as? String == "full" })
        #expect(object["abiRecord"] is NSNull)
    }

    @Test("info on a Keel image shows its ABI record and added, removed and policy-changed features")
    func keelImage() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/keel.save"
        try SaveImageSamples.writeKeelImage(path)
        let text = try Keel.run(["save-image", "info", path])
        #expect(text.status == 0, "\(text.stderr)")
        for line in [
            "ABI record (Keel):", "Requested CPU:  custom/exact/partial qemu64 -vmx",
            "Effective CPU:  custom/exact/full qemu64 +hypervisor -svm -vmx",
            "QEMU:           7.2.22 (kvm, machine pc-i440fx-7.2)", "Keel:           0.1.0",
            "Host:           signature 6/94/3, microcode 0xf0, kernel 6.1.0-test", "CPUID words:    3",
            "Domain:         keel-written", "UUID:           6b0d6c52-6b1c-4c8f-9a57-3c1f4c0e2d11",
            "  check: partial -> full\n", "  + hypervisor  CPUID[eax=0x1,ecx=0x0].ECX bit 31\n",
            "  - svm         CPUID[eax=0x80000001,ecx=0x0].ECX bit 2\n", "  ~ vmx: policy disable -> forbid\n",
        ] {
            #expect(text.stdout.contains(line), "missing \(line) in\n\(text.stdout)")
        }
        let json = try SaveImageSamples.json(try Keel.run(["save-image", "info", path, "--json"]).stdout)
        let difference = try #require((json["cpu"] as? [String: Any])?["difference"] as? [String: Any])
        #expect((difference["removed"] as? [[String: Any]])?.map { $0["name"] as? String } == ["svm"])
        let policies = try #require(difference["policyChanged"] as? [[String: Any]])
        #expect(policies.count == 1)
        #expect(policies.first?["name"] as? String == "vmx")
        #expect(policies.first?["original"] as? String == "disable")
        #expect(policies.first?["updated"] as? String == "forbid")
        let record = try #require(json["abiRecord"] as? [String: Any])
        #expect(record["qemuVersion"] as? String == "7.2.22")
        #expect(record["accelerator"] as? String == "kvm")
        #expect(record["machine"] as? String == "pc-i440fx-7.2")
        #expect(record["keelVersion"] as? String == "0.1.0")
        #expect(record["cpuidWords"] as? Int == 3)
        #expect((record["requested"] as? String)?.contains("check='partial'") == true)
        #expect((record["effective"] as? String)?.contains("name='svm'") == true)
        let host = try #require(record["host"] as? [String: Any])
        #expect(host["signature"] as? String == "6/94/3")
        #expect(host["microcode"] as? String == "0xf0")
        #expect(host["kernel"] as? String == "6.1.0-test")
    }

    @Test("an incomplete (Part) image is shown and marked, while dumpxml, define and verify refuse it")
    func incomplete() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/part.save"
        let writer = try SaveImageSamples.writeKeelImage(path, finish: false)
        defer { writer.discard() }
        let text = try Keel.run(["save-image", "info", path])
        #expect(text.status == 0)
        #expect(text.stdout.contains("Complete:       NO (magic LibvirtQemudPart"))
        let json = try SaveImageSamples.json(try Keel.run(["save-image", "info", "--json", path]).stdout)
        #expect(json["complete"] as? Bool == false)
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "dumpxml", path]), containing: "save image is incomplete")
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "verify", path]), containing: "save image is incomplete")
        let xml = try Keel.temporaryFile("part.xml", Data(SaveImageSamples.domainXML.utf8))
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "define", path, xml, "--paused"]), containing: "save image is incomplete")
    }
}

@Suite("keel save-image dumpxml, define and edit")
struct SaveImageDefineCLITests {
    @Test("dumpxml prints the stored XML byte for byte", arguments: ["libvirt-9.0-raw", "libvirt-9.0-gzip"])
    func dumpXML(name: String) throws {
        let expected = try SaveImageSamples.text(SaveImageSamples.fixture(name + ".xml"))
        for flags in [[], ["--security-info"]] {
            let result = try Keel.run(["save-image", "dumpxml", SaveImageSamples.fixture(name + ".save")] + flags)
            #expect(result.status == 0)
            #expect(result.stdout == expected)
        }
    }

    @Test("dumpxml leaves out graphics passwords unless --security-info is given")
    func securityInfo() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/keel.save"
        try SaveImageSamples.writeKeelImage(path)
        let plain = try Keel.run(["save-image", "dumpxml", path])
        #expect(plain.status == 0)
        #expect(!plain.stdout.contains("passwd"))
        #expect(plain.stdout.contains("<graphics type='vnc' port='-1' autoport='yes'/>"))
        let secure = try Keel.run(["save-image", "dumpxml", "--security-info", path])
        #expect(secure.stdout == SaveImageSamples.domainXML)
    }

    @Test("define with the identical XML changes nothing and says so")
    func identical() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let before = try SaveImageSamples.bytes(path)
        for flags in [[], ["--running"]] {  // the fixture was running
            let result = try Keel.run(["save-image", "define", path, SaveImageSamples.fixture("libvirt-9.0-raw.xml")] + flags)
            #expect(result.status == 0)
            #expect(result.stdout == "State file \(path) not changed: the XML and the running state are the same.\n")
        }
        #expect(try SaveImageSamples.bytes(path) == before)
    }

    @Test("define --paused and --running flip was_running with the XML unchanged; both together are refused")
    func runningState() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let xml = SaveImageSamples.fixture("libvirt-9.0-raw.xml")
        let before = try SaveImageSamples.bytes(path)
        let paused = try Keel.run(["save-image", "define", path, xml, "--paused"])
        #expect(paused.status == 0)
        #expect(paused.stdout == "State file \(path) updated.\n")
        var json = try SaveImageSamples.json(try Keel.run(["save-image", "info", "--json", path]).stdout)
        #expect(json["wasRunning"] as? Bool == false)
        let after = try SaveImageSamples.bytes(path)
        #expect(Array(after[92...]) == Array(before[92...]))
        #expect(after[24] == 0 && before[24] == 1)
        #expect(try Keel.run(["save-image", "define", path, xml, "--running"]).status == 0)
        json = try SaveImageSamples.json(try Keel.run(["save-image", "info", "--json", path]).stdout)
        #expect(json["wasRunning"] as? Bool == true)
        #expect(try SaveImageSamples.bytes(path) == before)
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "define", path, xml, "--running", "--paused"]), containing: "mutually exclusive")
    }

    @Test("define refuses an XML with another guest ABI with libvirt's message and leaves the image alone", arguments: [
        ("<model fallback='forbid'>qemu64</model>", "<model fallback='forbid'>pentium3</model>",
         "unsupported configuration: Target CPU model pentium3 does not match source qemu64"),
        ("check='partial'", "check='full'", "unsupported configuration: Target CPU check full does not match source partial"),
        ("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>",
         "unsupported configuration: Target domain vCPU max 2 does not match source 1"),
    ])
    func abiChange(from: String, to: String, message: String) throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let before = try SaveImageSamples.bytes(path)
        let original = try SaveImageSamples.text(SaveImageSamples.fixture("libvirt-9.0-raw.xml"))
        #expect(original.contains(from))
        let xml = try Keel.temporaryFile("abi-\(UUID().uuidString).xml", Data(original.replacingOccurrences(of: from, with: to).utf8))
        let result = try Keel.run(["save-image", "define", path, xml])
        #expect(result.status == 1)
        #expect(result.stderr == "error: \(message)\n")
        #expect(try SaveImageSamples.bytes(path) == before)
    }

    @Test("a larger XML that fits moves cookieOffset and keeps dataLength, the cookie and the stream; an oversized one is refused")
    func resize() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let before = try SaveImageSamples.bytes(path)
        let original = try SaveImageSamples.text(SaveImageSamples.fixture("libvirt-9.0-raw.xml"))
        let description = "  <description>\(String(repeating: "d", count: 100))</description>\n"
        let larger = original.replacingOccurrences(of: "</domain>", with: description + "</domain>")
        let file = try Keel.temporaryFile("larger.xml", Data(larger.utf8))
        let result = try Keel.run(["save-image", "define", path, file])
        #expect(result.status == 0, "\(result.stderr)")
        let info = try SaveImage.read(path: path)
        #expect(info.header.dataLength == 66539)
        #expect(info.header.cookieOffset == 767 + UInt32(description.utf8.count))
        #expect(info.dataArea.xml == larger)
        #expect(info.dataArea.cookie == (try SaveImageSamples.text(SaveImageSamples.fixture("libvirt-9.0-raw.cookie"))))
        let after = try SaveImageSamples.bytes(path)
        #expect(Array(after[66631...]) == Array(before[66631...]))
        #expect(try Keel.run(["save-image", "dumpxml", path]).stdout == larger)

        let current = try SaveImageSamples.bytes(path)
        let huge = original.replacingOccurrences(of: "</domain>", with: "  <description>\(String(repeating: "x", count: 70000))</description>\n</domain>")
        let hugeFile = try Keel.temporaryFile("huge-description.xml", Data(huge.utf8))
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "define", path, hugeFile]), containing: "new xml too large to fit in file")
        #expect(try SaveImageSamples.bytes(path) == current)
    }

    @Test("edit: an unchanged XML prints virsh's message and ignores --paused; a changed one is defined")
    func edit() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let before = try SaveImageSamples.bytes(path)
        let unchanged = try Keel.run(["save-image", "edit", path, "--paused"], environment: ["VISUAL": "", "EDITOR": "true"])
        #expect(unchanged.status == 0)
        #expect(unchanged.stdout == "Saved image \(path) XML configuration not changed.\n")
        #expect(try SaveImageSamples.bytes(path) == before)

        // A "sed script" editor: VISUAL wins over EDITOR, as in virsh.
        let script = directory + "/editor.sh"
        try Data("#!/bin/sh\nsed -i 's#<on_crash>destroy</on_crash>#<on_crash>restart</on_crash>#' \"$1\"\n".utf8).write(to: URL(fileURLWithPath: script))
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script)
        let changed = try Keel.run(["save-image", "edit", path, "--paused"], environment: ["VISUAL": script, "EDITOR": "false"])
        #expect(changed.status == 0, "\(changed.stderr)")
        #expect(changed.stdout == "State file \(path) edited.\n")
        let info = try SaveImage.read(path: path)
        #expect(info.dataArea.xml.contains("<on_crash>restart</on_crash>"))
        #expect(!info.header.wasRunning)

        let abi = try Keel.run(["save-image", "edit", path], environment: ["VISUAL": "", "EDITOR": "sed -i s/qemu64/pentium3/"])
        SaveImageSamples.expectOneLineError(abi, containing: "unsupported configuration: Target CPU model pentium3 does not match source qemu64")
        let failing = try Keel.run(["save-image", "edit", path], environment: ["VISUAL": "", "EDITOR": "false"])
        SaveImageSamples.expectOneLineError(failing, containing: "the editor 'false' exited with status 1")
    }

    @Test("virsh save-image-dumpxml still reads an image after keel save-image define")
    func virshReadsDefinedImage() throws {
        guard let virsh = ["/usr/bin/virsh", "/usr/local/bin/virsh"].first(where: FileManager.default.isExecutableFile) else {
            print("SKIP: virsh is not installed, so libvirt cannot be asked to read the rewritten image")
            return
        }
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let original = try SaveImageSamples.text(SaveImageSamples.fixture("libvirt-9.0-raw.xml"))
        let edited = original.replacingOccurrences(of: "</domain>", with: "  <description>defined by keel</description>\n</domain>")
        let file = try Keel.temporaryFile("virsh-define.xml", Data(edited.utf8))
        #expect(try Keel.run(["save-image", "define", path, file, "--paused"]).status == 0)

        let result = try Subprocess.run(virsh, ["-c", "qemu:///embed?root=\(directory)/embed", "save-image-dumpxml", path], timeout: 120)
        let stdout = result.stdout, stderr = result.stderr
        if result.status != 0 && stderr.contains("embed") {
            print("SKIP: this virsh cannot open qemu:///embed (\(stderr))")
            return
        }
        #expect(result.status == 0, "\(stderr)")
        #expect(stdout.contains("<description>defined by keel</description>"))
        #expect(stdout.contains("<name>keel-fixture</name>"))
    }
}

@Suite("keel save-image verify and bad input")
struct SaveImageVerifyCLITests {
    @Test("verify passes a raw libvirt image and a gzip Keel image with a one-line summary")
    func verifyOK() throws {
        let raw = try Keel.run(["save-image", "verify", SaveImageSamples.fixture("libvirt-9.0-raw.save")])
        #expect(raw.status == 0, "\(raw.stderr)")
        #expect(raw.stdout.hasPrefix("\(SaveImageSamples.fixture("libvirt-9.0-raw.save")): OK: raw QEMU stream version 3, 65536 bytes (64.0 KiB), read in "))
        #expect(raw.stdout.hasSuffix("B/s)\n"))
        #expect(raw.stdout.filter { $0 == "\n" }.count == 1)

        guard SaveImageSamples.hasGzip else {
            print("SKIP: gzip is not installed; verify of a compressed image is not checked")
            return
        }
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/gzip.save"
        try SaveImageSamples.writeKeelImage(path, compression: .gzip, streamBytes: 1 << 20)
        let gzip = try Keel.run(["save-image", "verify", path, "--json"])
        #expect(gzip.status == 0, "\(gzip.stderr)")
        let json = try SaveImageSamples.json(gzip.stdout)
        #expect(json["ok"] as? Bool == true)
        #expect(json["compression"] as? String == "gzip")
        #expect(json["streamBytes"] as? Int == 1 << 20)
        #expect((json["storedStreamBytes"] as? Int ?? Int.max) < 1 << 20)
        #expect(json["bytesPerSecond"] is Double || json["bytesPerSecond"] is Int)
        let text = try Keel.run(["save-image", "verify", path])
        #expect(text.stdout.contains(": OK: gzip QEMU stream version 3, 1048576 bytes (1.0 MiB) decompressed from "))
    }

    @Test("verify fails on a corrupted QEVM magic and on a truncated gzip stream, naming the problem")
    func verifyFailures() throws {
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try handle.seek(toOffset: 66631)
        handle.write(Data("QEMX".utf8))
        try handle.close()
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "verify", path]), containing: "QEMU stream magic is incorrect: 'QEMX'")
        // The header and XML are intact, so info still works.
        #expect(try Keel.run(["save-image", "info", path]).status == 0)

        guard SaveImageSamples.hasGzip else {
            print("SKIP: gzip is not installed; the truncated gzip stream is not checked")
            return
        }
        // The libvirt gzip fixture is cut after 64 KiB of compressed stream.
        SaveImageSamples.expectOneLineError(
            try Keel.run(["save-image", "verify", SaveImageSamples.fixture("libvirt-9.0-gzip.save")]),
            containing: "compression program 'gzip' exited with status 1"
        )
    }

    static let badFiles: [(String, Data, String)] = [
        ("garbage.save", BadInputTests.garbage(65536), "image magic is incorrect"),
        ("empty.save", Data(), "save image is incomplete (header is 0 of 92 bytes)"),
        ("short.save", Data("LibvirtQemudSave".utf8), "save image is incomplete (header is 16 of 92 bytes)"),
    ]

    @Test("every subcommand answers a missing file, a directory and garbage with one error line and exit 1")
    func badInputs() throws {
        let xml = SaveImageSamples.fixture("libvirt-9.0-raw.xml")
        var cases: [(String, String)] = [("/nonexistent/image.save", "No such file or directory"), ("/tmp", "it is a directory")]
        for (name, contents, expected) in Self.badFiles {
            cases.append((try Keel.temporaryFile(name, contents), expected))
        }
        for (path, expected) in cases {
            for command in [["info", path], ["info", path, "--json"], ["dumpxml", path], ["verify", path], ["define", path, xml], ["edit", path]] {
                let result = try Keel.run(["save-image"] + command, environment: ["VISUAL": "", "EDITOR": "true"])
                SaveImageSamples.expectOneLineError(result, containing: expected, "\(command)")
            }
        }
        let missingXML = try Keel.run(["save-image", "define", SaveImageSamples.fixture("libvirt-9.0-raw.save"), "/nonexistent.xml"])
        SaveImageSamples.expectOneLineError(missingXML, containing: "cannot read /nonexistent.xml: No such file or directory")
        let notDomain = try Keel.temporaryFile("not-domain.xml", Data("<cpu><model>qemu64</model></cpu>".utf8))
        let directory = try SaveImageSamples.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let image = try SaveImageSamples.copy("libvirt-9.0-raw.save", into: directory)
        SaveImageSamples.expectOneLineError(try Keel.run(["save-image", "define", image, notDomain]), containing: "expecting root element of 'domain', not 'cpu'")
    }
}
