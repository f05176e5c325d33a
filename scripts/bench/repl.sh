#!/usr/bin/env bash
# plasmavmc REPL speed benchmark (not a test): the issue's targets for `plasmavmc repl`:
#   1. start to first prompt under 150 ms (release build), next to `lua5.4 -i` and `python3 -q -i`
#      spawned in the same pty harness
#   2. a keystroke completion (Tab) under 10 ms, next to the echo of one plain character
# Prints markdown tables with ratios and PASS/FAIL per target.
#
# Usage: scripts/bench/repl.sh [repl_bench.py options]   e.g. --json /tmp/repl.json --starts 50
#   BENCH_SCRATCH   swift build scratch path (default .build-bench)
#   REPL_BENCH_STARTS, REPL_BENCH_WARMUP, REPL_BENCH_ROUNDS, REPL_BENCH_WARMUP_ROUNDS:
#   see repl_bench.py --help
# Steps (the shared ones in scripts/bench/common.sh): builds the release plasmavmc, then runs
# scripts/bench/repl_bench.py (standard library only) with a fresh temp dir under /tmp as
# PLASMAVMC_RUNTIME_DIR, HOME and history file location; the dir is removed on any exit.
# No VM is made.
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

BENCH_NAME=repl-bench
BENCH_GRACE=50         # repl_bench.py kills the programs it started on SIGTERM: up to 5 s
BENCH_SWEEP_VMS=0      # no VM is made: the dir is only removed
# Repo root, scratch path, the cleanup trap and the steps below: common.sh.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

echo "repl-bench: building release plasmavmc (scratch path $SCRATCH)" >&2
bench_build 5 2 plasmavmc
PLASMAVMC=$BIN/plasmavmc
[[ -x "$PLASMAVMC" ]] || { echo "repl-bench: $PLASMAVMC is missing" >&2; exit 1; }

bench_make_rundir pvr
bench_run_driver python3 "$BENCH_DIR/repl_bench.py" --plasmavmc "$PLASMAVMC" --runtime-dir "$RUNDIR" "$@"
