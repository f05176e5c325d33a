#!/usr/bin/env bash
# Fails when the committed generated code (Sources/PlasmaRPC/Generated) differs from what
# scripts/gen-proto.sh makes from proto/ now.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen-proto.sh "$tmp"
if ! diff -r Sources/PlasmaRPC/Generated "$tmp"; then
    echo "check-proto: Sources/PlasmaRPC/Generated is stale; run scripts/gen-proto.sh and commit" >&2
    exit 1
fi
echo "check-proto: generated code matches proto/" >&2
