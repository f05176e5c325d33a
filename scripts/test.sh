#!/usr/bin/env bash
# Sets up (QEMU, the test guest), builds, and runs every test: unit tests, and integration
# tests that boot the real guest under QEMU. CI runs exactly this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# The Lua test runner's own tests (plain lua5.4 with a fake vm module).
scripts/lua-runner-selftest.sh
swift build --build-tests
exec swift test --skip-build --disable-xctest "$@"
