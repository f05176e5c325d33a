#!/usr/bin/env bash
# gRPC service benchmark (not a test): one `plasmavmc serve` (release) on its unix socket with
# 16 created VMs: GetVm latency and requests/s with 1 and 16 callers (grpc-swift-2 client and
# Python grpcio, against `plasmavmc status NAME` as a process per request), WatchVm delivery
# latency from the event log line, and the server's RSS. Prints tables with ratios and targets.
#
# Usage: scripts/bench/grpc.sh [grpc_bench.py options]   e.g. --json /tmp/grpc.json --rounds 5
#   BENCH_SCRATCH        swift build scratch path (default .build-bench)
#   GRPC_BENCH_N, _N_CONC, _ROUNDS, _WARMUP, _STATUS_N, _STATUS_N_CONC, _CYCLES: grpc_bench.py --help
#   PLASMAVMC_GRPC_VENV  venv with grpcio + grpcio-tools (default .cache/grpc-venv, shared with
#                        scripts/grpc-e2e.sh; made from PyPI when missing)
# Steps (the shared ones in scripts/bench/common.sh): release build of plasmavmc,
# plasmavmc-supervisor and plasmavmc-bench, the test guest if missing, the venv, then
# grpc_bench.py in a fresh runtime dir under /tmp, removed on any exit with every VM made there.
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

BENCH_NAME=grpc-bench
BENCH_GRACE=150        # grpc_bench.py deletes its 16 VMs and stops the server on SIGTERM
BENCH_SWEEP_VMS=1
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

echo "grpc-bench: building release binaries (scratch path $SCRATCH)" >&2
bench_build 3 2 plasmavmc plasmavmc-supervisor plasmavmc-bench
PLASMAVMC=$BIN/plasmavmc
BENCH=$BIN/plasmavmc-bench
for b in "$PLASMAVMC" "$BIN/plasmavmc-supervisor" "$BENCH"; do
    [[ -x "$b" ]] || { echo "grpc-bench: $b is missing" >&2; exit 1; }
done

bench_ensure_guest

bench_ensure_grpc_venv

bench_make_rundir pvgb
bench_run_driver "$VENV/bin/python" "$BENCH_DIR/grpc_bench.py" \
    --plasmavmc "$PLASMAVMC" --bench "$BENCH" --proto-dir "$REPO_ROOT/proto" \
    --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
    --runtime-dir "$RUNDIR" "$@"
