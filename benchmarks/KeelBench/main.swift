// In-process benchmarks of the CPU algorithms. Run through scripts/bench-cpu.sh, which also
// times whole `keel cpu-baseline` processes against virsh; results go to BENCHMARKS.md.
import Glibc
import KeelCPU

func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Runs `body` `rounds` times and returns the median and the 90th percentile in nanoseconds.
func measure(rounds: Int, _ body: () throws -> Void) rethrows -> (median: Double, p90: Double) {
    var samples: [UInt64] = []
    samples.reserveCapacity(rounds)
    for _ in 0..<rounds {
        let start = now()
        try body()
        samples.append(now() - start)
    }
    samples.sort()
    return (Double(samples[samples.count / 2]), Double(samples[samples.count * 9 / 10]))
}

struct Generator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// Loading the built-in map is what every CPU command pays on start-up.
let builtinLoad = measure(rounds: 20) { _ = try? CPUMap.loadBuiltinForBenchmark() }
print("load the built-in map: median \(format3(builtinLoad.median / 1e6)) ms")

let arguments = CommandLine.arguments
let mapDirectory = arguments.count > 1 ? arguments[1] : nil
let map: CPUMap
do {
    map = try CPUMap.resolve(directory: mapDirectory)
} catch {
    print("cannot load CPU map: \(error)")
    exit(1)
}

do {
    // A Skylake-Server-class guest, as a domain would carry it, against a richer host.
    let guest = try CPUDefinition(xmlString: """
        <cpu mode='custom' match='exact' check='partial'>
          <model fallback='forbid'>Skylake-Server-IBRS</model>
          <vendor>Intel</vendor>
          <feature policy='require' name='invtsc'/>
          <feature policy='require' name='pdpe1gb'/>
          <feature policy='disable' name='hle'/>
          <feature policy='disable' name='rtm'/>
          <feature policy='optional' name='pcid'/>
          <feature policy='forbid' name='svm'/>
        </cpu>
        """)
    var host = try CPUDefinition(xmlString: "<cpu><arch>x86_64</arch><model>Skylake-Server-IBRS</model><vendor>Intel</vendor></cpu>")
    for name in ["vmx", "invtsc", "pdpe1gb", "ssbd", "md-clear", "stibp", "xsaves", "tsc_adjust", "pcid", "clflushopt"] where map.feature(named: name) != nil {
        host.features.append(.init(name, nil))
    }
    var result: CPUComparison.Result = .incompatible
    _ = try map.compare(guest, to: host)
    let compare = try measure(rounds: 20_000) { result = try map.compare(guest, to: host).result }
    print("compare Skylake-Server-IBRS guest vs host: median \(Int(compare.median / 1000)) µs (\(Int(compare.median)) ns), p90 \(Int(compare.p90)) ns — result \(result.rawValue)")

    // 1,000 host CPUs of one vendor, built from the map's Intel models and random extras.
    var rng = Generator(state: 7)
    let intelModels = map.models.filter { $0.vendor == "Intel" && $0.decodeHost }
    var hosts: [CPUDefinition] = []
    for _ in 0..<1000 {
        guard let model = intelModels.randomElement(using: &rng) else { break }
        var cpu = CPUDefinition(type: .host, model: model.name, vendor: "Intel")
        cpu.arch = "x86_64"
        for feature in map.features.shuffled(using: &rng).prefix(8) {
            cpu.features.append(.init(feature.name, nil))
        }
        hosts.append(cpu)
    }
    var baselineModel = ""
    let baseline = try measure(rounds: 50) { baselineModel = try map.baseline(hosts).model ?? "" }
    print("baseline of \(hosts.count) host CPUs: median \(String(format3(baseline.median / 1e6))) ms, p90 \(String(format3(baseline.p90 / 1e6))) ms — model \(baselineModel)")
} catch {
    print("benchmark failed: \(error)")
    exit(1)
}

func format3(_ value: Double) -> String {
    let scaled = (value * 1000).rounded() / 1000
    return String(scaled)
}
