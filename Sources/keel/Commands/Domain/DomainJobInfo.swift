import ArgumentParser
import KeelQEMU

/// `keel domjobinfo NAME`: progress of the save, restore or migration running on a domain.
struct DomainJobInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domjobinfo",
        abstract: "Show the progress of the job running on a domain.",
        discussion: "Works from any process: the job's own process records its progress in the state directory."
    )

    @OptionGroup var options: DriverOptions
    @Argument(help: "Domain name.") var name: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let backend = try options.backend()
        let job = try await driverCall { try await backend.jobInfo(name: name) }
        Output.print(json ? Self.json(job).text + "\n" : Self.text(job))
    }

    /// virsh's layout: "%-17s %-12s" rows, sizes with three decimals in binary units.
    static func text(_ job: DomainJob?, now: Int64 = DomainJob.wallClockMilliseconds()) -> String {
        func row(_ label: String, _ value: String) -> String { label.padding(17) + " " + value + "\n" }
        guard let job else { return row("Job type:", "None".padding(12)) + "\n" }
        var text = row("Job type:", "Unbounded".padding(12))
        text += row("Operation:", job.operation.displayName.padding(12))
        text += row("Time elapsed:", String(job.elapsedMilliseconds(now: now)).padding(12) + " ms")
        if let processed = job.dataProcessed { text += row("Data processed:", capacity(processed)) }
        if let remaining = job.dataRemaining { text += row("Data remaining:", capacity(remaining)) }
        if let total = job.dataTotal { text += row("Data total:", capacity(total)) }
        if job.operation != .restore {
            if let processed = job.dataProcessed { text += row("Memory processed:", capacity(processed)) }
            if let remaining = job.dataRemaining { text += row("Memory remaining:", capacity(remaining)) }
            if let total = job.dataTotal { text += row("Memory total:", capacity(total)) }
        }
        if let bandwidth = job.memoryBandwidth { text += row("Memory bandwidth:", capacity(bandwidth) + "/s") }
        return text + "\n"
    }

    static func json(_ job: DomainJob?, now: Int64 = DomainJob.wallClockMilliseconds()) -> JSON {
        guard let job else { return .object([("type", .string("none"))]) }
        func number(_ value: UInt64?) -> JSON { value.flatMap { Int(exactly: $0) }.map(JSON.int) ?? .null }
        return .object([
            ("type", .string("unbounded")), ("operation", .string(job.operation.rawValue)), ("pid", .int(Int(job.pid))),
            ("status", .string(job.status)), ("timeElapsedMs", .int(Int(job.elapsedMilliseconds(now: now)))),
            ("dataProcessed", number(job.dataProcessed)), ("dataRemaining", number(job.dataRemaining)),
            ("dataTotal", number(job.dataTotal)), ("memoryBandwidth", number(job.memoryBandwidth)),
        ])
    }

    /// virsh's vshPrettyCapacity with "%-.3lf %s".
    static func capacity(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024 && index < units.count - 1 {
            value /= 1024
            index += 1
        }
        var scaled = Int64((value * 1000).rounded())
        let whole = scaled / 1000
        scaled %= 1000
        let fraction = String(scaled)
        return "\(whole).\(String(repeating: "0", count: 3 - fraction.count))\(fraction) \(units[index])"
    }
}
