#!/usr/bin/env bash
# Lifecycle benchmark (not a test): create -> start -> kill -> delete through the in-process Lua
# plan, against QEMU's own Python library (qemu.qmp) doing the same, and optionally against the
# same plan through an earlier commit's build. Prints medians, ratios and bars.
#
# Usage: scripts/bench/lifecycle.sh [--baseline GIT-REF] [lifecycle_bench.py options]
#   --baseline REF   also build REF (in a temporary worktree, scratch .build-bench-base) and run
#                    the same plan through it, side by side
#   BENCH_SCRATCH    swift build scratch path (default .build-bench); LIFECYCLE_N runs (15)
# Exit status: 0 all targets met, 3 some target missed, other: the benchmark failed.
set -euo pipefail

BENCH_NAME=lifecycle-bench
BENCH_GRACE=100
BENCH_SWEEP_VMS=1
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/common.sh"

BASELINE=""
if [[ "${1:-}" == "--baseline" ]]; then
    BASELINE=${2:?--baseline needs a git ref}
    shift 2
fi

echo "lifecycle-bench: building release binaries (scratch path $SCRATCH)" >&2
bench_build 3 2 plasmavmc plasmavmc-supervisor
PLASMAVMC=$BIN/plasmavmc
extra=()
if [[ -n "$BASELINE" ]]; then
    base_tree=$(mktemp -d /tmp/pvbase.XXXXXX)
    trap_base() { git worktree remove --force "$base_tree" >/dev/null 2>&1 || rm -rf "$base_tree"; }
    git worktree add --detach -q "$base_tree" "$BASELINE"
    echo "lifecycle-bench: building the baseline $BASELINE" >&2
    (cd "$base_tree" && swift build -c release --scratch-path "$REPO_ROOT/.build-bench-base" 2>&1 | tail -n 2 >&2)
    base_bin=$(cd "$base_tree" && swift build -c release --scratch-path "$REPO_ROOT/.build-bench-base" --show-bin-path)
    trap_base
    extra=(--baseline-plasmavmc "$base_bin/plasmavmc" --baseline-label "$BASELINE")
fi

bench_ensure_guest

bench_ensure_qmp_venv

bench_make_rundir pvc
bench_run_driver "$VENV/bin/python" "$BENCH_DIR/lifecycle_bench.py" \
    --plasmavmc "$PLASMAVMC" "${extra[@]}" \
    --kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
    --runtime-dir "$RUNDIR" "$@"
