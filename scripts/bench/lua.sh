#!/usr/bin/env bash
# plasmavmc Lua plan benchmark (not a test): the issue's speed targets for `plasmavmc run`:
#   1. a call from Lua into a trivial Swift binding < 1 us          (lua_calls.lua)
#   2. v:status() within 1.3x of the QMP round trip alone           (lua_status.lua + Python floors)
#   3. vm.parallel booting 4 guests well under 4x one guest's boot   (lua_parallel.lua)
#   4. RSS of the plasmavmc process with 4 VMs running < 40 MiB      (sampled from /proc during 3)
# Prints markdown tables with ratios and PASS/FAIL per target.
#
# Usage: scripts/bench/lua.sh [lua_bench.py options]   e.g. --json /tmp/lua.json --only calls,status
#   BENCH_SCRATCH   swift build scratch path (default .build-bench)
#   LUA_BENCH_CALLS_N, LUA_BENCH_CALLS_REPS, LUA_BENCH_STATUS_K, LUA_BENCH_STATUS_ROUNDS,
#   LUA_BENCH_PERSISTENT_N, LUA_BENCH_PARALLEL_ROUNDS, LUA_BENCH_HOLD: see lua_bench.py --help
# Steps (the shared ones in scripts/bench/common.sh): builds the release plasmavmc, builds the
# test guest if missing (scripts/build-guest.sh), then runs scripts/bench/lua_bench.py (standard
# library only) in a fresh runtime dir under /tmp, which is removed on any exit together with
# every VM made there.
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

BENCH_NAME=lua-bench
# lua_bench.py stops its running plan (SIGTERM: the plan removes its ephemeral VMs) and
# deletes its VMs on SIGTERM: up to 40 s.
BENCH_GRACE=400
BENCH_SWEEP_VMS=1
# Repo root, scratch path, the cleanup trap and the steps below: common.sh.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

echo "lua-bench: building release plasmavmc (scratch path $SCRATCH)" >&2
bench_build 5 2 plasmavmc
PLASMAVMC=$BIN/plasmavmc
[[ -x "$PLASMAVMC" ]] || { echo "lua-bench: $PLASMAVMC is missing" >&2; exit 1; }

bench_ensure_guest

bench_make_rundir pvl
bench_run_driver python3 "$BENCH_DIR/lua_bench.py" \
    --plasmavmc "$PLASMAVMC" \
    --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
    --runtime-dir "$RUNDIR" "$@"
