#!/usr/bin/env bash
# plasmavmc benchmark (not a test): QMP round trips (Swift client vs a plain Python socket loop
# vs qemu.qmp), `plasmavmc status` wall time, and the control-plane overhead of
# create -> start -> kill -> delete beyond QEMU's own time. Prints a table.
#
# Usage: scripts/bench/run.sh [bench.py options]   e.g. --json /tmp/bench.json -n 5000
#   BENCH_SCRATCH   swift build scratch path (default .build-bench)
#   BENCH_N, BENCH_WARMUP, BENCH_ROUNDS, BENCH_STATUS_RUNS, BENCH_LIFECYCLE: see bench.py --help
# Steps: builds the release binaries plasmavmc and plasmavmc-bench, builds the test guest if
# missing (scripts/build-guest.sh), makes a venv with qemu.qmp under .cache/bench-venv if
# missing, then runs scripts/bench/bench.py in a fresh runtime dir under /tmp, which is
# removed on any exit together with every VM made there.
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT")/../.." && pwd)
cd "$REPO_ROOT"

SCRATCH=${BENCH_SCRATCH:-.build-bench}
VENV=$REPO_ROOT/.cache/bench-venv
GUEST_DIR=$REPO_ROOT/.cache/guest
RUNDIR=""
PLASMAVMC=""
BENCH_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # bench.py cleans up after itself on SIGTERM; give it a moment, then sweep.
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    if [[ -n "$RUNDIR" && -d "$RUNDIR" ]]; then
        # VMs the CLI knows about: delete --force kills and removes them.
        if [[ -n "$PLASMAVMC" && -x "$PLASMAVMC" ]]; then
            for d in "$RUNDIR"/*/; do
                [[ -f "$d/spec.json" ]] || continue
                PLASMAVMC_RUNTIME_DIR=$RUNDIR "$PLASMAVMC" delete "$(basename "$d")" --force >/dev/null 2>&1 || true
            done
        fi
        # Anything else launched from this dir (e.g. a raw QEMU of bench.py), by pid file,
        # only if its command line names this dir.
        for pf in "$RUNDIR"/*/qemu.pid; do
            [[ -f "$pf" ]] || continue
            pid=$(tr -dc 0-9 <"$pf")
            [[ -n "$pid" && -r /proc/$pid/cmdline ]] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$RUNDIR/"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        rm -rf -- "$RUNDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "bench: building release binaries (scratch path $SCRATCH)" >&2
for product in plasmavmc plasmavmc-bench; do
    if ! out=$(swift build -c release --scratch-path "$SCRATCH" --product "$product" 2>&1); then
        printf '%s\n' "$out" >&2
        echo "bench: swift build of $product failed" >&2
        exit 1
    fi
    printf '%s\n' "$out" | grep -v "should be located under" | tail -n 3 >&2 || true
done
BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
PLASMAVMC=$BIN/plasmavmc
BENCH=$BIN/plasmavmc-bench
[[ -x "$PLASMAVMC" && -x "$BENCH" ]] || { echo "bench: binaries missing under $BIN" >&2; exit 1; }

if [[ ! -f "$GUEST_DIR/vmlinuz" || ! -f "$GUEST_DIR/initrd.img" ]]; then
    echo "bench: building the test guest (scripts/build-guest.sh)" >&2
    scripts/build-guest.sh >/dev/null
fi

if ! "$VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
    echo "bench: installing qemu.qmp into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check qemu.qmp
fi

# Short path: unix socket paths have at most 107 bytes.
RUNDIR=$(mktemp -d /tmp/pvb.XXXXXX)

# In the background + wait, so a signal to this script runs the trap at once.
"$VENV/bin/python" "$REPO_ROOT/scripts/bench/bench.py" \
    --plasmavmc "$PLASMAVMC" --bench "$BENCH" \
    --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
    --runtime-dir "$RUNDIR" "$@" &
BENCH_PID=$!
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=""
exit "$rc"
