import KeelDomain

/// The text of a CPU verdict, as the dry runs of `keel restore` and `keel migrate` print it: one
/// sentence saying whether the guest CPU can be reproduced, naming each offending feature with
/// its CPUID leaf, subleaf, register and bit (or MSR index and bit), and the CPU model when known.
enum VerdictText {
    /// "Domain 'web' can be restored on this host with its CPU unchanged", or "Domain 'web'
    /// cannot migrate to tls://b:16514: missing cx16 (CPUID[eax=0x1,ecx=0x0].ECX bit 13): …".
    ///
    /// - Parameters:
    ///   - can: what the domain can do, as a verb phrase ("be restored on this host").
    ///   - model: the guest CPU's model, printed on a line of its own.
    static func render(domain: String, can: String, verdict: CPUVerdict, model: String? = nil) -> String {
        var text = verdict.restorable
            ? "Domain '\(domain)' can \(can) with its CPU unchanged\n"
            : "Domain '\(domain)' cannot \(can): \(verdict.message)\n"
        if let model { text += "CPU model: \(model)\n" }
        return text
    }
}
