#!/usr/bin/env bash
# The main job: set up, build plasmavmc, and take the test guest through its whole life:
# create (paused) -> start -> wait for the guest's ready line -> status -> stop -> delete.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
swift build -c release --product plasmavmc >&2
bin=$(swift build -c release --show-bin-path)/plasmavmc

export PLASMAVMC_RUNTIME_DIR=${PLASMAVMC_RUNTIME_DIR:-$(mktemp -d /tmp/plasmavmc-demo.XXXXXX)}
name=demo
cleanup() { "$bin" delete "$name" --force >/dev/null 2>&1 || true; rmdir "$PLASMAVMC_RUNTIME_DIR" 2>/dev/null || true; }
trap cleanup EXIT

run() { echo "\$ plasmavmc $*"; "$bin" "$@"; }
run create "$name" --kernel .cache/guest/vmlinuz --initrd .cache/guest/initrd.img --append quiet --memory 256M
run start "$name"
echo "# waiting for the guest's ready line on its serial console"
for _ in $(seq 1 600); do
    grep -q PLASMAVMC-GUEST-READY "$PLASMAVMC_RUNTIME_DIR/$name/console.log" 2>/dev/null && break
    sleep 0.1
done
echo "\$ plasmavmc logs $name --tail 300 | grep READY"
"$bin" logs "$name" --tail 300 | tr -d '\r' | grep -a PLASMAVMC-GUEST-READY
run status "$name"
run ls
run stop "$name"
run status "$name"
run delete "$name"
echo "# done: the guest booted, stopped and was removed"
