#!/usr/bin/env bash
# The main job: set up, build plasmavmc, and run the sample plan scripts/demo.lua, which boots
# the test guest, runs a command in it and stops it (the VM is ephemeral: nothing is left).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# plasmavmc and the per-VM supervisor it starts beside itself.
swift build -c release --product plasmavmc >&2
swift build -c release --product plasmavmc-supervisor >&2
bin=$(swift build -c release --show-bin-path)/plasmavmc

if [ -z "${PLASMAVMC_RUNTIME_DIR:-}" ]; then
    export PLASMAVMC_RUNTIME_DIR=$(mktemp -d /tmp/plasmavmc-demo.XXXXXX)
    trap 'rm -rf "$PLASMAVMC_RUNTIME_DIR"' EXIT
fi

echo "\$ plasmavmc run scripts/demo.lua"
"$bin" run scripts/demo.lua
echo "\$ plasmavmc ls"
"$bin" ls
