#!/usr/bin/env bash
# plasmavmc benchmark (not a test): QMP round trips (Swift client vs a plain Python socket loop
# vs qemu.qmp), `plasmavmc status` wall time, and the control-plane overhead of
# create -> start -> kill -> delete beyond QEMU's own time. Prints a table.
#
# Usage: scripts/bench/run.sh [bench.py options]   e.g. --json /tmp/bench.json -n 5000
#   BENCH_SCRATCH   swift build scratch path (default .build-bench)
#   BENCH_N, BENCH_WARMUP, BENCH_ROUNDS, BENCH_STATUS_RUNS, BENCH_LIFECYCLE: see bench.py --help
# Steps (the shared ones in scripts/bench/common.sh): builds the release binaries plasmavmc and
# plasmavmc-bench, builds the test guest if missing (scripts/build-guest.sh), makes a venv with
# qemu.qmp under .cache/bench-venv if missing, then runs scripts/bench/bench.py in a fresh
# runtime dir under /tmp, which is removed on any exit together with every VM made there.
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

BENCH_NAME=bench
BENCH_GRACE=100        # bench.py cleans up after itself on SIGTERM: up to 10 s
BENCH_SWEEP_VMS=1
# Repo root, scratch path, the cleanup trap and the steps below: common.sh.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

echo "bench: building release binaries (scratch path $SCRATCH)" >&2
bench_build 1 3 plasmavmc plasmavmc-bench
PLASMAVMC=$BIN/plasmavmc
BENCH=$BIN/plasmavmc-bench
[[ -x "$PLASMAVMC" && -x "$BENCH" ]] || { echo "bench: binaries missing under $BIN" >&2; exit 1; }

bench_ensure_guest

bench_ensure_qmp_venv

bench_make_rundir pvb
bench_run_driver "$VENV/bin/python" "$BENCH_DIR/bench.py" \
    --plasmavmc "$PLASMAVMC" --bench "$BENCH" \
    --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
    --runtime-dir "$RUNDIR" "$@"
