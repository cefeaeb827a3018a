// swift-tools-version: 6.2
import PackageDescription

/// One set of settings for every target (CONVENTIONS.md §2).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "intercom",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Intercom", targets: ["Intercom"]),
        .library(name: "IntercomTesting", targets: ["IntercomTesting"]),
        .executable(name: "intercom", targets: ["IntercomCLI"]),
        .executable(name: "actors-example", targets: ["ActorsExample"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        // Reference documentation only (`swift package generate-documentation --target Intercom`); nothing links it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin.git", from: "1.5.0"),
    ],
    targets: [
        // Wire: frames, handshake, codecs, limits. Pure: no I/O, no threads.
        .target(
            name: "IntercomWire",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Syscalls the Glibc module hides (behind _GNU_SOURCE): thin C wrappers, no dlsym.
        .target(name: "CIntercomShims"),
        // Layers, bottom-up; each module sees only those below it (docs/ARCHITECTURE.md).
        // Transports: byte streams that carry frames (sockets, shared memory, in-memory)
        // behind `FrameTransport` with its upgrade hook; the errors and the small
        // concurrency helpers every layer shares.
        .target(
            name: "IntercomTransport",
            dependencies: [
                "IntercomWire",
                "CIntercomShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The connection: its state machine, the RPC peer over any transport,
        // routing, and connecting/listening (handshake included).
        .target(
            name: "IntercomCore",
            dependencies: [
                "IntercomWire",
                "IntercomTransport",
                "CIntercomShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        // Named services on a host: claim, discover, presence, broadcast, reconnect.
        .target(
            name: "IntercomBus",
            dependencies: [
                "IntercomWire",
                "IntercomTransport",
                "IntercomCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Spawning and supervising workers.
        .target(
            name: "IntercomProcesses",
            dependencies: [
                "IntercomTransport",
                "IntercomCore",
                "IntercomBus",
                "CIntercomShims",
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Distributed actors over connections and bus services.
        .target(
            name: "IntercomActors",
            dependencies: [
                "IntercomWire",
                "IntercomTransport",
                "IntercomCore",
                "IntercomBus",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // What users import: every layer above the wire, re-exported.
        .target(
            name: "Intercom",
            dependencies: ["IntercomWire", "IntercomTransport", "IntercomCore", "IntercomBus", "IntercomProcesses", "IntercomActors"],
            swiftSettings: swiftSettings
        ),
        // For users' tests: two peers in one process with virtual time and faults,
        // and a certificate authority made in-process for TLS.
        .target(
            name: "IntercomTesting",
            dependencies: [
                "Intercom",
                "IntercomWire",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "IntercomCLI",
            dependencies: [
                "Intercom",
                "IntercomTesting",
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // Example: a distributed actor protocol shared by a service and its clients.
        .target(
            name: "IntercomActorExample",
            dependencies: ["Intercom"],
            path: "Examples/Calculator",
            swiftSettings: swiftSettings
        ),
        // Example: two processes talking through distributed actors (`swift run actors-example`).
        .executableTarget(
            name: "ActorsExample",
            dependencies: ["Intercom", "IntercomActorExample"],
            path: "Examples/ActorsExample",
            swiftSettings: swiftSettings
        ),
        // A real child process that the tests spawn (never a mock of the transport).
        .executableTarget(
            name: "IntercomTestHelper",
            dependencies: [
                "Intercom", "IntercomWire", "IntercomActorExample", "CIntercomShims",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // libFuzzer targets for every decoder of a stranger's bytes (Scripts/fuzz.sh;
        // built with -sanitize=fuzzer, never by `swift build` alone).
        .executableTarget(
            name: "IntercomFuzz",
            dependencies: ["Intercom", "IntercomWire", .product(name: "NIOCore", package: "swift-nio")],
            path: "Fuzz/IntercomFuzz",
            swiftSettings: swiftSettings + [.unsafeFlags(["-parse-as-library"])]
        ),
        .testTarget(
            name: "IntercomWireTests",
            dependencies: ["IntercomWire", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // What every test module shares: the resource audit and its gate.
        .target(
            name: "IntercomTestSupport",
            dependencies: ["Intercom", "IntercomTesting"],
            swiftSettings: swiftSettings
        ),
        // Clients of the calculator that import only its protocol module, never the implementation.
        .testTarget(
            name: "IntercomActorTests",
            dependencies: [
                "Intercom", "IntercomActorExample", "IntercomTestHelper", "IntercomTestSupport", "IntercomTesting", "ActorsExample",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntercomTests",
            dependencies: [
                "Intercom", "IntercomWire", "IntercomTestHelper", "IntercomCLI", "IntercomTestSupport", "IntercomTesting",
                "CIntercomShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryLogging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
