// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "plasmavmc",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "plasmavmc", targets: ["plasmavmc"]),
        .executable(name: "plasmavmc-supervisor", targets: ["plasmavmc-supervisor"]),
        .library(name: "PlasmaQMP", targets: ["PlasmaQMP"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C helpers: posix_spawn with setsid, unix-socket connect, /proc reading.
        .target(name: "CPlasmaSys"),
        // The per-VM supervisor process: a lean C program (one poll loop) that starts QEMU,
        // records how it ended, logs its events and serves its console.
        .executableTarget(name: "plasmavmc-supervisor", dependencies: ["CPlasmaSys"],
                          cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Wno-unused-parameter"])]),
        // Value types, validation, the state model and errors. No I/O.
        .target(name: "PlasmaCore", swiftSettings: strict),
        // QMP client. Imports none of our modules so it is usable alone.
        .target(name: "PlasmaQMP", dependencies: ["CPlasmaSys"], swiftSettings: strict),
        // The protocols every backend implements.
        .target(name: "PlasmaHypervisor", dependencies: ["PlasmaCore"], swiftSettings: strict),
        // QEMU/KVM backend: command line, runtime folder, process, QMP.
        .target(name: "PlasmaKVM",
                dependencies: ["PlasmaHypervisor", "PlasmaQMP", "CPlasmaSys"],
                swiftSettings: strict),
        // Debian's liblua5.4, and the C shim that keeps Lua's longjmp out of Swift frames.
        .systemLibrary(name: "CLua", pkgConfig: "lua5.4", providers: [.apt(["liblua5.4-dev"])]),
        .target(name: "CLuaShim", dependencies: ["CLua"]),
        // libedit (BSD) for the REPL's line editing, and the C glue its globals need.
        .systemLibrary(name: "CEdit", pkgConfig: "libedit", providers: [.apt(["libedit-dev"])]),
        .target(name: "CPlasmaEdit", dependencies: ["CEdit"]),
        // Lua plans: state, scheduler, the `vm` API. The prelude's Lua text (stdlib/plasma) is
        // compiled in by the EmbedLua plugin.
        .target(name: "PlasmaLua", dependencies: ["PlasmaVMM", "CLua", "CLuaShim", "CPlasmaEdit"], swiftSettings: strict,
                plugins: ["EmbedLua"]),
        .executableTarget(name: "plasmavmc-embed-lua", swiftSettings: strict),
        .plugin(name: "EmbedLua", capability: .buildTool(), dependencies: ["plasmavmc-embed-lua"]),
        // The one internal API every front end uses.
        .target(name: "PlasmaVMM", dependencies: ["PlasmaHypervisor"], swiftSettings: strict),
        // The gRPC VmService (`plasmavmc serve`) and its client, a VMHost for remote hosts. The
        // code under Generated/ comes from proto/ (scripts/gen-proto.sh).
        .target(name: "PlasmaRPC",
                dependencies: [
                    "PlasmaVMM", "CPlasmaSys",
                    .product(name: "GRPCCore", package: "grpc-swift-2"),
                    .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                    .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                    .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                ],
                swiftSettings: strict),
        .executableTarget(
            name: "plasmavmc",
            dependencies: [
                "PlasmaVMM", "PlasmaKVM", "PlasmaLua", "PlasmaRPC", "CPlasmaEdit", "CPlasmaSys",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // Benchmark driver for scripts/bench (QMP round trips through the Swift client, GetVm
        // through the gRPC client).
        .executableTarget(name: "plasmavmc-bench",
                          dependencies: ["PlasmaQMP", "PlasmaRPC",
                                         .product(name: "GRPCCore", package: "grpc-swift-2"),
                                         .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport")],
                          swiftSettings: strict),
        // Test doubles shared by the test targets.
        .target(name: "PlasmaTestSupport",
                dependencies: ["PlasmaHypervisor", "PlasmaQMP", "CPlasmaSys"],
                swiftSettings: strict),
        .testTarget(name: "PlasmaCoreTests", dependencies: ["PlasmaCore"]),
        .testTarget(name: "PlasmaQMPTests", dependencies: ["PlasmaQMP", "PlasmaTestSupport"]),
        .testTarget(name: "PlasmaVMMTests", dependencies: ["PlasmaVMM", "PlasmaTestSupport"]),
        .testTarget(name: "PlasmaLuaTests", dependencies: ["PlasmaLua", "PlasmaVMM", "PlasmaTestSupport"]),
        .testTarget(name: "PlasmaKVMTests",
                    dependencies: ["PlasmaKVM", "PlasmaVMM", "PlasmaCore", "PlasmaTestSupport"]),
        .testTarget(name: "PlasmaRPCTests", dependencies: ["PlasmaRPC", "PlasmaVMM", "PlasmaTestSupport", "CPlasmaSys"]),
        .testTarget(name: "CLITests", dependencies: ["PlasmaTestSupport"]),
    ]
)
