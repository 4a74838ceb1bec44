import Foundation
import Testing

/// `keel` as a client of a real keeld against `keel` embedded on a state directory: the same
/// verbs on the same tiny TCG guest must print the same, human and `--json`, exit the same, and
/// fail the same way.
@Suite("keel through keeld and embedded: the same answers", .serialized)
struct ClientModeTests {
    /// One step: arguments, with "@/" standing for the mode's directory.
    typealias Step = [String]

    /// Runs `steps` in a mode; returns one transcript entry per step, normalized.
    static func transcript(_ mode: ModeRoot, _ steps: [Step], after: (Step, ClientRun.Result) throws -> Void = { _, _ in }) throws -> [String] {
        try steps.map { step in
            let arguments = step.map { $0.hasPrefix("@/") ? mode.root + $0.dropFirst(1) : $0 }
            let result = try mode.keel(arguments)
            try after(step, result)
            return ClientRun.normalized("$ keel \(step.joined(separator: " "))\n\(result.stdout)\(result.stderr)[exit \(result.status)]\n", root: mode.root)
        }
    }

    static func compare(_ embedded: [String], _ client: [String]) {
        #expect(embedded.count == client.count)
        for (left, right) in zip(embedded, client) {
            #expect(left == right, "embedded and client differ")
        }
    }

    static let lifecycle: [Step] = [
        ["define", "@/g.xml"], ["define", "@/g.xml", "--json"],
        ["list", "--all"], ["list", "--all", "--json"], ["list"],
        ["dominfo", "web"], ["dominfo", "web", "--json"],
        ["dumpxml", "web"], ["dumpxml", "web", "--json"],
        ["start", "web"],
        ["dominfo", "web"], ["dominfo", "web", "--json"], ["list", "--json"],
        ["dumpxml", "web"], ["dumpxml", "web", "--inactive"], ["dumpxml", "web", "--migratable", "--json"],
        ["suspend", "web"], ["dominfo", "web"], ["resume", "web", "--json"],
        ["domjobinfo", "web"], ["domjobinfo", "web", "--json"],
        ["autostart", "web"], ["dominfo", "web", "--json"], ["autostart", "web", "--disable", "--json"],
        ["save", "web", "@/web.img"],
        ["list", "--all", "--json"],
        ["restore", "@/web.img", "--dry-run"], ["restore", "@/web.img", "--dry-run", "--json"],
        ["restore", "@/web.img", "--dry-run", "--xml", "@/web-image.xml"],
        ["restore", "@/web.img", "--paused", "--xml", "@/web-image.xml", "--json"], ["dominfo", "web"],
        ["resume", "web"],
        ["managedsave", "web", "--json"],
        ["list", "--all", "--managed-save"], ["dominfo", "web"],
        ["managedsave-dumpxml", "web"], ["managedsave-define", "web", "@/managed.xml", "--running"],
        ["start", "web", "--json"], ["dominfo", "web"],
        ["reboot", "web"], ["shutdown", "web", "--timeout", "0.5"],
        ["managedsave", "web"], ["managedsave-remove", "web", "--json"], ["managedsave-remove", "web"],
        ["start", "web", "--paused"], ["list"],
        ["destroy", "web", "--json"], ["undefine", "web"], ["list", "--all"],
        ["capabilities"], ["capabilities", "--json"],
        ["domcapabilities", "--virttype", "qemu"], ["domcapabilities", "--virttype", "qemu", "--json"],
        ["hypervisor-cpu-compare", "@/qemu64.xml", "--virttype", "qemu"], ["hypervisor-cpu-compare", "@/qemu64.xml", "--virttype", "qemu", "--json"],
        ["hypervisor-cpu-baseline", "@/x2apic.xml", "--virttype", "qemu"],
        ["hypervisor-cpu-baseline", "@/x2apic.xml", "--virttype", "qemu", "--features", "--migratable", "--json"],
    ]

    static let qemu64 = "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"
    static let x2apic = "<cpu mode='custom' match='exact'><model>qemu64</model><feature policy='require' name='x2apic'/></cpu>"

    static func prepare(_ mode: ModeRoot) throws {
        _ = try mode.write(mode.domainXML(name: "web"), to: "g.xml")
        _ = try mode.write(qemu64, to: "qemu64.xml")
        _ = try mode.write(x2apic, to: "x2apic.xml")
        _ = try mode.write("<domain type='qemu'><name>bad</name>", to: "bad.xml")
    }

    @Test("every driver verb prints the same through keeld as embedded, human and --json, with the same exit status")
    func sameAnswers() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await ModeRoot.withBoth { embedded, client in
            var transcripts: [[String]] = []
            for mode in [embedded, client] {
                try Self.prepare(mode)
                transcripts.append(try Self.transcript(mode, Self.lifecycle) { step, result in
                    if step == ["save", "web", "@/web.img"] {
                        // restore --xml reads a replacement XML on the client's side.
                        let xml = try ClientRun.keel(["save-image", "dumpxml", mode.root + "/web.img"])
                        _ = try mode.write(xml.stdout, to: "web-image.xml")
                    }
                    if step == ["managedsave-dumpxml", "web"] {
                        // The next step writes it back: unchanged, but through the whole path.
                        _ = try mode.write(result.stdout, to: "managed.xml")
                    }
                })
            }
            Self.compare(transcripts[0], transcripts[1])
            let text = transcripts[1].joined()
            // The transcript shows what the steps did, not a run of identical failures.
            for expected in [
                "Domain 'web' started\n[exit 0]", "Domain 'web' saved to ROOT/web.img\n[exit 0]",
                "Domain 'web' can be restored on this host with its CPU unchanged\n[exit 0]",
                "{\"name\": \"web\", \"state\": \"paused\"}\n[exit 0]", "Managed save:   yes",
                "error: domain 'web' did not shut down within 0.5 s\n[exit 1]",
                "Managed save state file of domain 'web' not changed.\n[exit 0]",
                "Domain 'web' has no manage save image; removal skipped\n[exit 0]",
                "{\"name\": \"web\", \"state\": \"shutoff\"}\n[exit 0]",
                "\"pid\": PID", "<domainCapabilities>", "\"domain\": \"qemu\"",
                "is a superset of CPU described in ROOT/qemu64.xml\n[exit 0]",
            ] {
                #expect(text.contains(expected), "the client transcript lacks \(expected)")
            }
            #expect(!text.contains("keeld"), "no transport error in the client transcript")
        }
    }

    static let ceiling = """
        <keel>
          <cpu-ceiling>
            <cpu><model>qemu64</model><feature policy='require' name='hypervisor'/><feature policy='disable' name='cx16'/></cpu>
          </cpu-ceiling>
        </keel>
        """

    static let failures: [Step] = [
        ["restore", "@/web.img", "--dry-run"], ["restore", "@/web.img", "--dry-run", "--json"],
        ["restore", "@/web.img"], ["restore", "@/web.img", "--json"], ["list", "--all"],
        ["dominfo", "nosuch"], ["dominfo", "nosuch", "--json"], ["start", "nosuch"], ["save", "nosuch", "@/nosuch.img"],
        ["undefine", "nosuch"], ["destroy", "web"], ["suspend", "web"], ["shutdown", "web"], ["dumpxml", "../etc"], ["dominfo", "a/b"],
        ["managedsave", "web"], ["managedsave-dumpxml", "web"], ["managedsave-remove", "web"], ["domjobabort", "web"],
        ["define", "@/bad.xml"], ["restore", "@/nosuch.img"],
        ["hypervisor-cpu-compare", "@/x2apic.xml", "--virttype", "qemu"],
        ["hypervisor-cpu-compare", "@/x2apic.xml", "--virttype", "qemu", "--error"],
        ["hypervisor-cpu-compare", "@/x2apic.xml", "--virttype", "qemu", "--json"],
        ["domcapabilities", "--virttype", "qemu", "--machine", "nosuch"],
    ]

    @Test("errors keep their code and message across the wire: unknown domains, bad names, wrong states, a CPU ceiling's refusal with its bits")
    func sameFailures() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await ModeRoot.withBoth { embedded, client in
            var transcripts: [[String]] = []
            for mode in [embedded, client] {
                try Self.prepare(mode)
                for step in [["define", mode.root + "/g.xml"], ["start", "web"], ["save", "web", mode.root + "/web.img"]] {
                    let result = try mode.keel(step)
                    try #require(result.status == 0, "\(step): \(result.stderr)")
                }
                // The image was written without a ceiling; this host now has one without cx16.
                try Self.ceiling.write(toFile: mode.state + "/config.xml", atomically: true, encoding: .utf8)
                if let daemon = mode.daemon {
                    daemon.signal(SIGHUP)
                    _ = try eventually { try mode.keel(["restore", mode.root + "/web.img", "--dry-run"]).status == 1 ? true : nil }
                }
                transcripts.append(try Self.transcript(mode, Self.failures))
            }
            Self.compare(transcripts[0], transcripts[1])
            let text = transcripts[1].joined()
            for expected in [
                "Domain 'web' cannot be restored on this host: missing cx16 (CPUID[eax=0x1,ecx=0x0].ECX bit 13): beyond this host's CPU ceiling\n[exit 1]",
                #"{"name": "cx16", "bits": ["CPUID[eax=0x1,ecx=0x0].ECX bit 13"], "reason": "beyond this host's CPU ceiling"}"#,
                "error: this host cannot reproduce the saved guest CPU: missing cx16 (CPUID[eax=0x1,ecx=0x0].ECX bit 13): beyond this host's CPU ceiling\n[exit 1]",
                "error: domain 'nosuch' not found\n[exit 1]",
                "error: invalid domain name '../etc': use letters, digits and - _ . +\n[exit 1]",
                "error: invalid domain name 'a/b'",
                "error: the CPU is incompatible with host CPU: Host CPU does not provide required features: x2apic\n[exit 2]",
                #"{"name": "x2apic", "bits": ["CPUID[eax=0x1,ecx=0x0].ECX bit 21"]}"#,
            ] {
                #expect(text.contains(expected), "the client transcript lacks \(expected)")
            }
            #expect(try client.keel(["list", "--all"]).stdout.contains("web                  shut off"), "no QEMU was started")
        }
    }

    @Test("a save in progress: domjobinfo shows it and domjobabort stops it through keeld as embedded; the guest runs on")
    func jobInProgress() async throws {
        if let reason = KeeldProcess.guestUnavailableReason { print("SKIP: \(reason)"); return }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/xz") else { print("SKIP: xz is not installed"); return }
        try await ModeRoot.withBoth { embedded, client in
            var outcomes: [String] = []
            for mode in [embedded, client] {
                // 24 MiB of random bytes through xz: a save of a tiny guest that lasts seconds.
                let xml = try mode.write(mode.domainXML(name: "busy", memoryMiB: 32, cmdline: "fill=24"), to: "busy.xml")
                #expect(try mode.keel(["define", xml]).status == 0)
                #expect(try mode.keel(["start", "busy"]).status == 0)
                try mode.waitForSerial("busy", "FILLED")
                let (save, _, saveErrors) = try ClientRun.spawn(
                    ["save", "busy", mode.root + "/busy.img", "--compress", "xz", "--connect", mode.connect], directory: mode.root
                )
                let job = try eventually(timeout: 30) { () -> [String: Any]? in
                    let info = try mode.keel(["domjobinfo", "busy", "--json"])
                    let object = try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any]
                    return object?["type"] as? String == "unbounded" && object?["dataTotal"] as? Int != nil ? object : nil
                }
                #expect(job["operation"] as? String == "save")
                #expect((job["timeElapsedMs"] as? Int ?? -1) >= 0)
                let text = try mode.keel(["domjobinfo", "busy"]).stdout
                #expect(text.hasPrefix("Job type:         Unbounded   \nOperation:        Save        \nTime elapsed:     "), "\(text)")
                #expect(text.contains("\nData total:       "), "\(text)")
                let aborted = try mode.keel(["domjobabort", "busy", "--json"])
                outcomes.append("abort: \(aborted.stdout)\(aborted.stderr)[exit \(aborted.status)]")
                let status = ClientRun.wait(save, timeout: 60)
                outcomes.append("save: \((try? String(contentsOfFile: saveErrors, encoding: .utf8)) ?? "")[exit \(status ?? -1)]")
                outcomes.append("after: " + ClientRun.normalized(try mode.keel(["list"]).stdout, root: mode.root))
                #expect(!FileManager.default.fileExists(atPath: mode.root + "/busy.img"), "no image is left behind")
                #expect(try mode.keel(["destroy", "busy"]).status == 0)
            }
            #expect(outcomes[0...2] == outcomes[3...5], "embedded and client differ")
            #expect(outcomes[0] == "abort: {\"name\": \"busy\", \"aborted\": true, \"operation\": \"save\"}\n[exit 0]")
            #expect(outcomes[1] == "save: error: operation aborted: save of 'busy' cancelled by client\n[exit 1]")
            #expect(outcomes[2].contains("busy                 running"), "the guest resumes as it was: \(outcomes[2])")
        }
    }
}
