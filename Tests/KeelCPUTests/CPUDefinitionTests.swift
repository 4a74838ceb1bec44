import Foundation
import KeelCPU
import KeelXML
import Testing

@Suite("CPU definitions parse and format as libvirt 9.0 does")
struct CPUDefinitionTests {
    @Test("a guest CPU round-trips in libvirt's layout")
    func guestRoundTrip() throws {
        let xml = """
            <cpu mode='custom' match='exact' check='partial'>
              <model fallback='forbid' vendor_id='GenuineKeel'>Skylake-Client-IBRS</model>
              <vendor>Intel</vendor>
              <topology sockets='1' dies='1' cores='2' threads='2'/>
              <cache level='3' mode='emulate'/>
              <maxphysaddr mode='emulate' bits='42'/>
              <feature policy='require' name='invtsc'/>
              <feature policy='disable' name='hle'/>
              <feature policy='optional' name='pcid'/>
              <feature policy='force' name='x2apic'/>
              <feature policy='forbid' name='vmx'/>
              <numa>
                <cell id='0' cpus='0-3' memory='512' unit='MiB'/>
              </numa>
            </cpu>

            """
        // vendor_id must be 12 characters; use a valid one.
        let text = xml.replacingOccurrences(of: "GenuineKeel", with: "GenuineKeel!")
        let cpu = try parseCPU(text)
        #expect(cpu.type == .guest)
        #expect(cpu.check == .partial)
        #expect(cpu.fallback == .forbid)
        #expect(cpu.vendorID == "GenuineKeel!")
        #expect(cpu.topology == CPUDefinition.Topology(sockets: 1, dies: 1, cores: 2, threads: 2))
        #expect(cpu.features.map(\.policy) == [.require, .disable, .optional, .force, .forbid])
        #expect(cpu.formatted() == text)
    }

    @Test("defaults follow libvirt: custom mode, exact match, allow fallback, require policy, dies=1")
    func defaults() throws {
        let cpu = try parseCPU("<cpu><model>Nehalem</model><topology sockets='2' cores='1' threads='1'/><feature name='x2apic'/></cpu>")
        #expect(cpu.mode == .custom)
        #expect(cpu.match == .exact)
        #expect(cpu.check == .default)
        #expect(cpu.fallback == .allow)
        #expect(cpu.features == [CPUDefinition.Feature("x2apic", .require)])
        #expect(cpu.topology?.dies == 1)
        #expect(cpu.formatted() == """
            <cpu mode='custom' match='exact'>
              <model fallback='allow'>Nehalem</model>
              <topology sockets='2' dies='1' cores='1' threads='1'/>
              <feature policy='require' name='x2apic'/>
            </cpu>

            """)
    }

    @Test("a CPU with <arch> is a host CPU whose features have no policy")
    func hostCPU() throws {
        let cpu = try parseCPU("""
            <cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model><vendor>Intel</vendor>
            <microcode version='240'/><signature family='6' model='94' stepping='3'/>
            <counter name='tsc' frequency='2592000000' scaling='no'/><feature name='vmx'/></cpu>
            """)
        #expect(cpu.type == .host)
        #expect(cpu.mode == nil)
        #expect(cpu.features == [CPUDefinition.Feature("vmx", nil)])
        #expect(cpu.signature == CPUDefinition.Signature(family: 6, model: 94, stepping: 3))
        #expect(cpu.microcodeVersion == 240)
        #expect(try parseCPU(cpu.formatted()) == cpu)
    }

    @Test("host-passthrough keeps migratable and formats no model")
    func passthrough() throws {
        let cpu = try parseCPU("<cpu mode='host-passthrough' check='none' migratable='on'/>")
        #expect(cpu.migratable == true)
        #expect(cpu.formatted() == "<cpu mode='host-passthrough' check='none' migratable='on'/>\n")
    }

    /// Every rejection of libvirt's virCPUDefParseXML, with libvirt's message.
    static let rejections: [(String, String)] = [
        ("<model>Nehalem</model>", "XML does not contain expected 'cpu' element"),
        ("<cpu match='exact'><arch>x86_64</arch><model>Nehalem</model></cpu>", "'arch' element cannot be used inside 'cpu' element with 'match' attribute'"),
        ("<cpu mode='custom'><arch>x86_64</arch><model>Nehalem</model></cpu>", "Attribute mode is only allowed for guest CPU"),
        ("<cpu mode='fancy'><model>Nehalem</model></cpu>", "Invalid mode attribute 'fancy'"),
        ("<cpu mode='custom' migratable='on'><model>Nehalem</model></cpu>", "Attribute migratable is only allowed for 'host-passthrough' / 'maximum' CPU mode"),
        ("<cpu mode='host-passthrough' migratable='maybe'/>", "Invalid value for attribute 'migratable' in element 'cpu': 'maybe'."),
        ("<cpu match='loose'><model>Nehalem</model></cpu>", "Invalid value for attribute 'match' in element 'cpu': 'loose'."),
        ("<cpu check='some'><model>Nehalem</model></cpu>", "Invalid value for attribute 'check' in element 'cpu': 'some'."),
        ("<cpu><arch>sparc128</arch><model>Nehalem</model></cpu>", "Unknown architecture sparc128"),
        ("<cpu><arch>x86_64</arch></cpu>", "Missing CPU model name"),
        ("<cpu><arch>x86_64</arch><model>X</model><signature family='0' model='1' stepping='1'/></cpu>", "Invalid value for attribute 'family' in element 'signature': Zero is not permitted"),
        ("<cpu><arch>x86_64</arch><model>X</model><signature family='6' stepping='1'/></cpu>", "Missing required attribute 'model' in element 'signature'"),
        ("<cpu><arch>x86_64</arch><model>X</model><microcode version='abc'/></cpu>", "invalid microcode version"),
        ("<cpu><model fallback='maybe'>Nehalem</model></cpu>", "Invalid fallback attribute"),
        ("<cpu><model vendor_id='short'>Nehalem</model></cpu>", "vendor_id must be exactly 12 characters long"),
        ("<cpu><model vendor_id='Genuine,Keel'>Nehalem</model></cpu>", "vendor id is invalid"),
        ("<cpu><vendor>Intel</vendor></cpu>", "CPU vendor specified without CPU model"),
        ("<cpu><model>Nehalem</model><topology cores='1' threads='1'/></cpu>", "Missing required attribute 'sockets' in element 'topology'"),
        ("<cpu><model>Nehalem</model><topology sockets='1' cores='0' threads='1'/></cpu>", "Invalid value for attribute 'cores' in element 'topology': Zero is not permitted"),
        ("<cpu><model>Nehalem</model><topology sockets='1' cores='-2' threads='1'/></cpu>", "Invalid value for attribute 'cores' in element 'topology': '-2'. Expected non-negative integer value"),
        ("<cpu><feature name='x2apic'/></cpu>", "Non-empty feature list specified without CPU model"),
        ("<cpu><model>Nehalem</model><feature policy='sometimes' name='x2apic'/></cpu>", "Invalid CPU feature policy"),
        ("<cpu><model>Nehalem</model><feature policy='require' name=''/></cpu>", "Invalid CPU feature name"),
        ("<cpu><model>Nehalem</model><feature policy='require'/></cpu>", "Invalid CPU feature name"),
        ("<cpu><model>Nehalem</model><feature name='vmx'/><feature policy='disable' name='vmx'/></cpu>", "CPU feature 'vmx' specified more than once"),
        ("<cpu><model>Nehalem</model><cache mode='emulate'/><cache mode='disable'/></cpu>", "at most one CPU cache element may be specified"),
        ("<cpu><model>Nehalem</model><cache level='4' mode='emulate'/></cpu>", "invalid CPU cache level, must be in range [1,3]"),
        ("<cpu><model>Nehalem</model><cache level='2'/></cpu>", "Missing required attribute 'mode' in element 'cache'"),
        ("<cpu><model>Nehalem</model><maxphysaddr mode='guess'/></cpu>", "Invalid value for attribute 'mode' in element 'maxphysaddr': 'guess'."),
    ]

    @Test("every input libvirt rejects is rejected with libvirt's message", arguments: rejections)
    func rejection(xml: String, message: String) {
        do {
            let cpu = try parseCPU(xml)
            Issue.record("accepted \(xml) as \(cpu.formatted())")
        } catch let error as CPUError {
            #expect(error.message == message)
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("a CPU parsed as a host CPU needs <arch>")
    func hostNeedsArch() {
        #expect(throws: CPUError(.invalidXML, "Missing CPU architecture")) {
            try parseCPU("<cpu><model>Nehalem</model></cpu>", as: .host)
        }
    }

    @Test("parse → format → parse is stable for seeded random guest CPUs")
    func randomRoundTrip() throws {
        let names = ["vmx", "x2apic", "pcid", "invtsc", "hle", "rtm", "avx512f", "tsc_adjust", "pdpe1gb", "ssbd"]
        for seed in UInt64(1)...300 {
            var rng = SeededGenerator(seed: seed)
            var cpu = CPUDefinition(model: ["Nehalem", "Skylake-Server", "EPYC", "qemu64"].randomElement(using: &rng))
            cpu.match = CPUDefinition.Match.allCases.randomElement(using: &rng) ?? .exact
            cpu.check = CPUDefinition.Check.allCases.randomElement(using: &rng) ?? .default
            cpu.fallback = Bool.random(using: &rng) ? .allow : .forbid
            if Bool.random(using: &rng) { cpu.vendor = Bool.random(using: &rng) ? "Intel" : "AMD" }
            if Bool.random(using: &rng) {
                cpu.topology = .init(sockets: UInt32.random(in: 1...4, using: &rng), dies: 1, cores: UInt32.random(in: 1...8, using: &rng), threads: UInt32.random(in: 1...2, using: &rng))
            }
            for name in names.shuffled(using: &rng).prefix(Int.random(in: 0...6, using: &rng)) {
                cpu.features.append(.init(name, CPUDefinition.Policy.allCases.randomElement(using: &rng)))
            }
            let text = cpu.formatted()
            let reparsed = try parseCPU(text)
            #expect(reparsed == cpu, "seed \(seed)")
            #expect(reparsed.formatted() == text, "seed \(seed)")
        }
    }
}
