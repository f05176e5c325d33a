# Shared by the benchmark entry points run.sh, lua.sh, repl.sh, lifecycle.sh and grpc.sh;
# sourced, not run.
#
# The entry point sets, before sourcing (after `set -euo pipefail`):
#   BENCH_NAME       prefix of its messages (bench, lua-bench, repl-bench)
#   BENCH_GRACE      tenths of a second the Python driver gets after SIGTERM to clean up
#                    after itself before SIGKILL
#   BENCH_SWEEP_VMS  1: on exit also delete the VMs in the runtime dir through the CLI
#                    (PLASMAVMC) and SIGKILL any QEMU left there by pid file; 0: only remove it
# Sourcing cds to the repo root and sets REPO_ROOT, BENCH_DIR (this folder), SCRATCH
# (BENCH_SCRATCH, default .build-bench), GUEST_DIR, and installs the cleanup trap: on any exit
# (EXIT; INT, TERM and HUP exit 130, 143, 129) it stops the driver, sweeps and removes RUNDIR,
# and exits with the status the script was leaving with.
# Functions: bench_build (release build, BIN), bench_ensure_guest, bench_make_rundir (RUNDIR),
# bench_run_driver (runs the driver and exits with its status).

BENCH_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/../.." && pwd)
cd "$REPO_ROOT"

SCRATCH=${BENCH_SCRATCH:-.build-bench}
GUEST_DIR=$REPO_ROOT/.cache/guest
RUNDIR=""
PLASMAVMC=""
BENCH_PID=""
BIN=""

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # The driver cleans up after itself on SIGTERM; give it a moment, then sweep.
    if [[ -n "$BENCH_PID" ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        for _ in $(seq "$BENCH_GRACE"); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    if [[ -n "$RUNDIR" && -d "$RUNDIR" ]]; then
        if [[ "$BENCH_SWEEP_VMS" == 1 ]]; then
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
        fi
        rm -rf -- "$RUNDIR"
    fi
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# bench_build ATTEMPTS TAIL PRODUCT...: `swift build -c release` of each product into SCRATCH,
# printing the last TAIL lines of its output; a build that saw a source change under it (others
# edit Sources/ while this runs) is retried, up to ATTEMPTS tries in all. Sets BIN (bin path).
bench_build() {
    local attempts=$1 tail_lines=$2 product attempt out
    shift 2
    for product in "$@"; do
        for ((attempt = 1; ; attempt++)); do
            if out=$(swift build -c release --scratch-path "$SCRATCH" --product "$product" 2>&1); then
                printf '%s\n' "$out" | grep -v "should be located under" | tail -n "$tail_lines" >&2 || true
                break
            fi
            if [[ $attempt -lt $attempts ]] && grep -q "was modified during the build" <<<"$out"; then
                echo "$BENCH_NAME: a source changed during the build; retrying ($attempt)" >&2
                sleep 2
                continue
            fi
            printf '%s\n' "$out" >&2
            echo "$BENCH_NAME: swift build of $product failed" >&2
            exit 1
        done
    done
    BIN=$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)
}

# bench_ensure_guest: builds the test guest (scripts/build-guest.sh) if GUEST_DIR lacks it.
bench_ensure_guest() {
    if [[ ! -f "$GUEST_DIR/vmlinuz" || ! -f "$GUEST_DIR/initrd.img" ]]; then
        echo "$BENCH_NAME: building the test guest (scripts/build-guest.sh)" >&2
        scripts/build-guest.sh >/dev/null
    fi
}

# bench_ensure_qmp_venv: VENV=.cache/bench-venv, a venv with QEMU's qemu.qmp library (from PyPI),
# made if missing.
bench_ensure_qmp_venv() {
    VENV=$REPO_ROOT/.cache/bench-venv
    if ! "$VENV/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
        echo "$BENCH_NAME: installing qemu.qmp into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check qemu.qmp
    fi
}

# bench_ensure_grpc_venv: VENV=PLASMAVMC_GRPC_VENV (default .cache/grpc-venv), the venv of
# scripts/grpc-e2e.sh with grpcio and grpcio-tools (Tests/grpc/requirements.txt, from PyPI),
# made or refreshed when missing or when the requirements changed.
bench_ensure_grpc_venv() {
    VENV=${PLASMAVMC_GRPC_VENV:-$REPO_ROOT/.cache/grpc-venv}
    local req=$REPO_ROOT/Tests/grpc/requirements.txt
    if ! cmp -s "$req" "$VENV/requirements.txt" || ! "$VENV/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
        echo "$BENCH_NAME: installing grpcio and grpcio-tools into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        cp "$req" "$VENV/requirements.txt"
    fi
}

# bench_make_rundir PREFIX: RUNDIR=a fresh /tmp/PREFIX.XXXXXX (short path: unix socket paths
# have at most 107 bytes); the trap removes it.
# BENCH_TMP (default /tmp) is where it goes: e.g. /run (tmpfs), where root's VMs live by default.
bench_make_rundir() {
    RUNDIR=$(mktemp -d "${BENCH_TMP:-/tmp}/$1.XXXXXX")
}

# bench_run_driver CMD...: runs the driver and exits with its status. In the background + wait,
# so a signal to this script runs the trap at once.
bench_run_driver() {
    local rc=0
    "$@" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    exit "$rc"
}
