#!/usr/bin/env bash
# Sets up (QEMU, the test guest), builds, and runs every test: unit tests, integration tests
# that boot the real guest under QEMU, and the gRPC service end to end with an external client
# (scripts/grpc-e2e.sh). CI runs exactly this. Arguments go to `swift test` (the end-to-end test
# of the service runs whatever they are). Exits non-zero if any part failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# The Lua test runner's own tests (plain lua5.4 with a fake vm module).
scripts/lua-runner-selftest.sh
swift build --build-tests
rc=0
swift test --skip-build --disable-xctest "$@" || rc=$?
# `plasmavmc serve` driven by Python grpcio over unix, TCP and mutual TLS, with the real guest.
scripts/grpc-e2e.sh --no-build || rc=$?
exit "$rc"
