// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "keel",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "keel", targets: ["keel"]),
        .library(name: "KeelCPU", targets: ["KeelCPU"]),
        .library(name: "KeelSaveImage", targets: ["KeelSaveImage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // libxml2, the parser libvirt itself uses; see KeelXML for the hardening.
        .systemLibrary(
            name: "CLibXML2",
            pkgConfig: "libxml-2.0",
            providers: [.apt(["libxml2-dev"])]
        ),
        .target(name: "KeelXML", dependencies: ["CLibXML2"], swiftSettings: strict),
        .target(name: "KeelCPU", dependencies: ["KeelXML"], exclude: ["CPUMap"], swiftSettings: strict),
        .target(name: "KeelDomain", dependencies: ["KeelXML", "KeelCPU"], swiftSettings: strict),
        .target(name: "KeelSaveImage", dependencies: [], swiftSettings: strict),
        .target(name: "KeelQMP", dependencies: [], swiftSettings: strict),
        .target(name: "KeelQEMU", dependencies: ["KeelXML", "KeelCPU", "KeelDomain", "KeelSaveImage", "KeelQMP"], swiftSettings: strict),
        .executableTarget(
            name: "keel",
            dependencies: [
                "KeelXML", "KeelCPU", "KeelDomain", "KeelSaveImage", "KeelQEMU",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "keel-bench", dependencies: ["KeelCPU"], path: "benchmarks/KeelBench", swiftSettings: strict),
        .testTarget(name: "KeelXMLTests", dependencies: ["KeelXML"]),
        .testTarget(name: "KeelCPUTests", dependencies: ["KeelCPU", "KeelXML"], resources: [.copy("Fixtures")]),
        .testTarget(name: "KeelDomainTests", dependencies: ["KeelDomain"]),
        .testTarget(name: "KeelSaveImageTests", dependencies: ["KeelSaveImage", "KeelDomain"], exclude: ["Fixtures"]),
        .testTarget(name: "KeelQMPTests", dependencies: ["KeelQMP"], exclude: ["Transcripts"]),
        .testTarget(name: "KeelQEMUTests", dependencies: ["KeelQEMU", "KeelQMP", "KeelCPU", "KeelDomain"]),
        // Runs the built `keel` binary as users do.
        .testTarget(name: "KeelCLITests", dependencies: ["KeelSaveImage", "KeelDomain", "KeelCPU"]),
    ]
)
