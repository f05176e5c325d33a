#!/usr/bin/env bash
# Regenerates Sources/PlasmaRPC/Generated from proto/ with Debian's protoc and the plugins built
# from the package graph (scripts/protogen: swift-protobuf's protoc-gen-swift and
# grpc-swift-protobuf's protoc-gen-grpc-swift-2). The generated code is committed;
# scripts/check-proto.sh (run by CI) fails when regenerating would change it.
#   scripts/gen-proto.sh [OUT_DIR]   (default: Sources/PlasmaRPC/Generated)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${1:-Sources/PlasmaRPC/Generated}
if ! command -v protoc >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "gen-proto: installing protobuf-compiler" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq protobuf-compiler >/dev/null
fi
scratch=${PROTOGEN_SCRATCH:-$PWD/.build-protogen}
swift build --package-path scripts/protogen --scratch-path "$scratch" --product protoc-gen-swift >&2
swift build --package-path scripts/protogen --scratch-path "$scratch" --product protoc-gen-grpc-swift-2 >&2
bin=$(swift build --package-path scripts/protogen --scratch-path "$scratch" --show-bin-path)

mkdir -p "$out"
protoc --proto_path=proto \
    --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
    --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
    --swift_out="$out" --swift_opt=Visibility=Public \
    --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Public,Server=true,Client=true \
    plasmavmc/v1/vm.proto
echo "gen-proto: wrote $(find "$out" -name '*.swift' | wc -l) files under $out" >&2
