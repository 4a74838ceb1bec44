// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "keel",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "keel", targets: ["keel"]),
        .executable(name: "keeld", targets: ["keeld"]),
        .library(name: "KeelCPU", targets: ["KeelCPU"]),
        .library(name: "KeelSaveImage", targets: ["KeelSaveImage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
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
        // The migration protocol's pure core: the cookie, the messages and both state machines.
        .target(name: "KeelMigration", dependencies: ["KeelXML", "KeelCPU", "KeelDomain"], swiftSettings: strict),
        .target(name: "KeelQEMU", dependencies: ["KeelXML", "KeelCPU", "KeelDomain", "KeelSaveImage", "KeelQMP", "KeelMigration"], swiftSettings: strict),
        // keeld's client: HTTP/1.1 over a Unix socket, no NIO (the CLI is built without it).
        .target(name: "KeelClient", dependencies: [], swiftSettings: strict),
        .executableTarget(
            name: "keel",
            dependencies: [
                "KeelXML", "KeelCPU", "KeelDomain", "KeelSaveImage", "KeelQEMU", "KeelClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // The daemon: the driver behind an HTTP/JSON API on a Unix socket.
        .target(
            name: "KeelDaemon",
            dependencies: [
                "KeelXML", "KeelCPU", "KeelDomain", "KeelSaveImage", "KeelQEMU",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                "KeelMigration",
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keeld",
            dependencies: [
                "KeelDaemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "keel-bench", dependencies: ["KeelCPU"], path: "benchmarks/KeelBench", swiftSettings: strict),
        // keeld under load: a closed-loop HTTP client over its Unix socket (benchmarks/daemon-load.sh).
        .executableTarget(name: "keel-load", path: "benchmarks/KeelLoad", swiftSettings: strict),
        // Child processes with deadlines, shared by the test suites.
        .target(name: "KeelTestSupport", path: "Tests/KeelTestSupport", swiftSettings: strict),
        .testTarget(name: "KeelXMLTests", dependencies: ["KeelXML"]),
        .testTarget(name: "KeelCPUTests", dependencies: ["KeelCPU", "KeelXML", "KeelTestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "KeelDomainTests", dependencies: ["KeelDomain"]),
        .testTarget(name: "KeelSaveImageTests", dependencies: ["KeelSaveImage", "KeelDomain", "KeelTestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "KeelQMPTests", dependencies: ["KeelQMP", "KeelTestSupport"], exclude: ["Transcripts"]),
        .testTarget(name: "KeelQEMUTests", dependencies: ["KeelQEMU", "KeelQMP", "KeelCPU", "KeelDomain", "KeelTestSupport"]),
        .testTarget(name: "KeelClientTests", dependencies: ["KeelClient"]),
        .testTarget(name: "KeelMigrationTests", dependencies: ["KeelMigration", "KeelDomain", "KeelCPU", "KeelXML"], resources: [.copy("Fixtures")]),
        // Runs the built `keel` binary as users do.
        .testTarget(name: "KeelCLITests", dependencies: ["KeelSaveImage", "KeelDomain", "KeelCPU", "KeelTestSupport"]),
        // Runs the built `keeld` binary and talks to it over its socket.
        .testTarget(name: "KeelDaemonTests", dependencies: ["KeelDaemon", "KeelQEMU", "KeelSaveImage", "KeelTestSupport"]),
    ]
)
