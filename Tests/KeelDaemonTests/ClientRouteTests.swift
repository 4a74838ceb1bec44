import Foundation
import Testing

/// The routes the `keel` client needs beyond the first API: hypervisor CPU queries, replacing
/// the managed-save XML, managed-save state in lists, capabilities as data.
@Suite("keeld: hypervisor CPU queries, managed-save XML, capabilities reports", .serialized)
struct ClientRouteTests {
    static let qemu64 = "<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"
    static let x2apic = "<cpu mode='custom' match='exact'><model>qemu64</model><feature policy='require' name='x2apic'/></cpu>"

    @Test("hypervisor-cpu compare and baseline judge against QEMU under TCG; --error is a 422 with the feature's bits")
    func hypervisorCPU() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            let plain = try keeld.post("/v1/hypervisor-cpu/compare", ["cpu": Self.qemu64, "virtType": "qemu"])
            #expect(plain.status == 200, "\(plain.text)")
            #expect(["identical", "superset"].contains(plain.json["result"] as? String ?? ""))

            // TCG in QEMU 7.2 cannot provide x2apic.
            let incompatible = try keeld.post("/v1/hypervisor-cpu/compare", ["cpu": Self.x2apic, "virtType": "qemu"])
            #expect(incompatible.status == 200)
            #expect(incompatible.json["result"] as? String == "incompatible")
            #expect(incompatible.json["message"] as? String == "Host CPU does not provide required features: x2apic")
            let features = try #require(incompatible.json["features"] as? [[String: Any]])
            #expect(features.first?["name"] as? String == "x2apic")
            #expect(features.first?["kind"] as? String == "missing")
            let bit = try #require((features.first?["bits"] as? [[String: Any]])?.first)
            #expect(bit["leaf"] as? Int == 1 && bit["register"] as? String == "ecx" && bit["bit"] as? Int == 21)
            #expect(bit["description"] as? String == "CPUID[eax=0x1,ecx=0x0].ECX bit 21")

            let refused = try keeld.post("/v1/hypervisor-cpu/compare", ["cpu": Self.x2apic, "virtType": "qemu", "failIncompatible": true])
            #expect(refused.status == 422)
            #expect(refused.errorCode == "incompatible-cpu")
            #expect(refused.errorMessage == "the CPU is incompatible with host CPU: Host CPU does not provide required features: x2apic")
            #expect(((refused.json["error"] as? [String: Any])?["features"] as? [[String: Any]])?.first?["name"] as? String == "x2apic")

            let baseline = try keeld.post("/v1/hypervisor-cpu/baseline", ["cpus": [Self.x2apic, Self.qemu64], "virtType": "qemu"])
            #expect(baseline.status == 200, "\(baseline.text)")
            let cpu = try #require(baseline.json["cpu"] as? String)
            #expect(cpu.contains("<model fallback='forbid'>"), "\(cpu)")
            #expect(!cpu.contains("name='x2apic'/>") || cpu.contains("policy='disable' name='x2apic'"), "only what TCG can enable")
            let expanded = try keeld.post("/v1/hypervisor-cpu/baseline", ["cpus": [Self.qemu64], "virtType": "qemu", "features": true, "migratable": true])
            #expect((expanded.json["cpu"] as? String ?? "").components(separatedBy: "<feature").count > cpu.components(separatedBy: "<feature").count)

            for (path, body, code, message) in [
                ("/v1/hypervisor-cpu/compare", ["cpu": "<cpu><model>Pentium-9000</model></cpu>", "virtType": "qemu"] as [String: Any], "invalid-argument", "Unknown CPU model Pentium-9000"),
                ("/v1/hypervisor-cpu/compare", ["cpu": "<cpu><model>qemu64</cpu>"], "invalid-argument", "cpu: "),
                ("/v1/hypervisor-cpu/compare", ["cpu": Self.qemu64, "virtType": "xen"], "invalid-argument", "unknown virttype 'xen'"),
                ("/v1/hypervisor-cpu/compare", [:], "bad-request", "missing field 'cpu'"),
                ("/v1/hypervisor-cpu/baseline", ["cpus": [String]()], "bad-request", "at least one <cpu>"),
                ("/v1/hypervisor-cpu/baseline", ["cpus": ["<cpu"]], "invalid-argument", "cpus[0]: "),
            ] {
                let response = try keeld.post(path, body)
                #expect(response.status == 400, "\(path) \(body): \(response.text)")
                #expect(response.errorCode == code, "\(response.text)")
                #expect(response.errorMessage.contains(message), "\(response.errorMessage)")
            }
            #expect(try keeld.get("/v1/hypervisor-cpu/compare").status == 405)
        }
    }

    @Test("capabilities and domain capabilities carry a report with the same facts as their XML")
    func capabilityReports() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            let host = try keeld.get("/v1/capabilities")
            #expect(host.status == 200)
            let xml = try #require(host.json["xml"] as? String)
            let report = try #require(host.json["report"] as? [String: Any])
            #expect((report["domainTypes"] as? [String])?.first == "qemu")
            #expect(report["emulator"] as? String == "/usr/bin/qemu-system-x86_64")
            let machines = try #require(report["machines"] as? [[String: Any]])
            #expect(machines.contains { $0["isDefault"] as? Bool == true })
            for machine in machines.prefix(5) {
                #expect(xml.contains(">\(machine["name"] as? String ?? "?")</machine>"))
            }
            if let uuid = report["hostUUID"] as? String { #expect(xml.contains("<uuid>\(uuid)</uuid>")) }

            let domain = try keeld.get("/v1/domcapabilities?virttype=qemu")
            #expect(domain.status == 200)
            let domainReport = try #require(domain.json["report"] as? [String: Any])
            #expect(domainReport["domain"] as? String == "qemu")
            #expect(domainReport["hostPassthrough"] as? Bool == false, "host-passthrough needs KVM")
            let machine = try #require(domainReport["machine"] as? String)
            #expect((domain.json["xml"] as? String)?.contains("<machine>\(machine)</machine>") == true)
            let custom = try #require(domainReport["custom"] as? [[String: Any]])
            #expect(custom.contains { $0["name"] as? String == "qemu64" && $0["usable"] as? Bool == true })
            #expect(try keeld.get("/v1/domcapabilities?virttype=qemu&machine=nosuch").errorCode == "unsupported")
        }
    }

    @Test("a managed-save image shows in the list; PUT replaces its XML (unchanged, changed, ABI-breaking); DELETE removes it")
    func managedSaveDefine() async throws {
        if let reason = Keeld.guestUnavailableReason { print("SKIP: \(reason)"); return }
        try await Keeld.with { keeld in
            #expect(try keeld.post("/v1/domains", ["xml": keeld.domainXML(name: "ms")]).status == 201)
            #expect(try keeld.post("/v1/domains/ms/start").status == 200)
            func listed() throws -> Bool? {
                (try keeld.get("/v1/domains").json["domains"] as? [[String: Any]])?.first { $0["name"] as? String == "ms" }?["managedSave"] as? Bool
            }
            #expect(try listed() == false)
            let saved = try keeld.post("/v1/domains/ms/managedsave")
            #expect(saved.status == 200, "\(saved.text)")
            #expect(try listed() == true)

            let xml = try #require(try keeld.get("/v1/domains/ms/managedsave").json["xml"] as? String)
            let same = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/ms/managedsave", ["xml": xml])
            #expect(same.status == 200, "\(same.text)")
            #expect(same.json["changed"] as? Bool == false)
            #expect(same.json["job"] as? String == "managedsave-define")
            let running = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/ms/managedsave", ["xml": xml, "running": false])
            #expect(running.json["changed"] as? Bool == true, "\(running.text)")

            let bigger = xml.replacingOccurrences(of: "<memory unit='MiB'>16</memory>", with: "<memory unit='MiB'>32</memory>")
            try #require(bigger != xml)
            let breaking = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/ms/managedsave", ["xml": bigger])
            #expect(breaking.status >= 400, "\(breaking.text)")
            #expect(breaking.errorMessage.isEmpty == false)
            let missing = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/ms/managedsave", [:])
            #expect(missing.errorCode == "bad-request")

            #expect(try keeld.delete("/v1/domains/ms/managedsave").json["removed"] as? Bool == true)
            #expect(try listed() == false)
            let none = try UnixHTTP.json(socket: keeld.socket, "PUT", "/v1/domains/ms/managedsave", ["xml": xml])
            #expect(none.status >= 400, "no image to replace the XML of: \(none.text)")
            #expect(try keeld.get("/metrics").text.contains(#"keel_jobs_total{job="managedsave-define",outcome="ok"} 2"#))
        }
    }
}
