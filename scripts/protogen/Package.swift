// swift-tools-version:6.0
// The protoc plugins that generate Sources/PlasmaRPC/Generated from proto/: built from the same
// package graph the project uses (scripts/gen-proto.sh builds and runs them). Kept apart from
// the main package so a normal build does not compile the code generators.
import PackageDescription

let package = Package(
    name: "plasmavmc-protogen",
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    ],
    targets: [
        // Not used: a package needs a target of its own; the plugins are the dependencies' products.
        .target(name: "ProtogenAnchor", path: "Anchor"),
    ]
)
