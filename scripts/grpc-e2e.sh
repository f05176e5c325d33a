#!/usr/bin/env bash
# End-to-end test of `plasmavmc serve` with an external gRPC client: Tests/grpc/e2e_test.py
# (Python grpcio, stubs generated at test time from proto/plasmavmc/v1/vm.proto) drives the real
# server binary and the real test guest over a unix socket, TCP loopback and mutual TLS, and
# checks the status codes and the server's own life (SIGTERM, SIGKILL, a second server).
#
# Usage: scripts/grpc-e2e.sh [--no-build] [unittest arguments, e.g. -k tls]
#   --no-build           use the debug binaries already built (scripts/test.sh builds them first)
#   PLASMAVMC_GRPC_VENV  the venv with grpcio and grpcio-tools (default .cache/grpc-venv; made
#                        and filled from PyPI when missing or when Tests/grpc/requirements.txt
#                        changed)
#   PLASMAVMC_GUEST_DIR  the test guest (default .cache/guest; built when missing)
# Prints unittest's lines; exits 0 when every test passed, non-zero otherwise. Whatever the test
# leaves (server, supervisor or QEMU processes, sockets, folders) is swept and reported as a
# failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

log() { echo "grpc-e2e: $*" >&2; }

BUILD=1
if [[ "${1:-}" == "--no-build" ]]; then
    BUILD=0
    shift
fi

# Beyond what scripts/setup.sh installs: venv's ensurepip (Debian splits it off) and openssl.
need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v openssl >/dev/null || need+=(openssl)
if [[ ${#need[@]} -gt 0 ]]; then
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    log "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

VENV=${PLASMAVMC_GRPC_VENV:-$REPO/.cache/grpc-venv}
REQ=$REPO/Tests/grpc/requirements.txt
if ! cmp -s "$REQ" "$VENV/requirements.txt" || ! "$VENV/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
    log "installing grpcio and grpcio-tools from PyPI into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/requirements.txt"
fi

if [[ $BUILD == 1 ]]; then
    log "building plasmavmc and plasmavmc-supervisor (debug)"
    swift build --product plasmavmc 2>&1 | tail -n 1 >&2
    swift build --product plasmavmc-supervisor 2>&1 | tail -n 1 >&2
fi
BIN=$(swift build --show-bin-path)
for b in plasmavmc plasmavmc-supervisor; do
    [[ -x "$BIN/$b" ]] || { log "no $BIN/$b: build it first (swift build), or run without --no-build"; exit 1; }
done

GUEST=${PLASMAVMC_GUEST_DIR:-$REPO/.cache/guest}
if [[ ! -f "$GUEST/vmlinuz" || ! -f "$GUEST/initrd.img" ]]; then
    log "building the test guest (scripts/build-guest.sh)"
    GUEST_DIR=$GUEST scripts/build-guest.sh >/dev/null
fi

# Everything the test makes lives under TMP (short: unix socket paths hold 107 bytes).
TMP=$(mktemp -d /tmp/pvg.XXXXXX)
TEST_PID=""

# Live processes whose command line names TMP: servers (--runtime-dir), supervisors, QEMUs.
strays() {
    local p
    for p in /proc/[0-9]*; do
        [[ "${p#/proc/}" == "$$" ]] && continue
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$TMP/"; then
            # Zombies have exited; their parent (this shell's test, or init) reaps them.
            [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null || echo Z)" == Z ]] || echo "${p#/proc/}"
        fi
    done
}

cleanup() {
    local rc=$? d pid left
    trap - EXIT INT TERM HUP
    if [[ -n "$TEST_PID" ]] && kill -0 "$TEST_PID" 2>/dev/null; then
        # The test cleans up after itself on SIGTERM (stops its servers, sweeps its runtime
        # folders); SIGKILL after 60 s, and the sweep below does the rest.
        kill -TERM "$TEST_PID" 2>/dev/null || true
        for _ in $(seq 600); do kill -0 "$TEST_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$TEST_PID" 2>/dev/null || true
        wait "$TEST_PID" 2>/dev/null || true
    fi
    # What the test left: VMs (deleted through the CLI), then any process started from TMP.
    for d in "$TMP"/rt.*/*/; do
        [[ -f "$d/spec.json" ]] || continue
        log "cleanup: vm $(basename "$d") was left in $(dirname "$d"); deleting it"
        "$BIN/plasmavmc" delete "$(basename "$d")" --force --runtime-dir "$(dirname "$d")" >/dev/null 2>&1 || true
        rc=1
    done
    left=$(strays)
    if [[ -n "$left" ]]; then
        for pid in $left; do
            log "cleanup: killing a leftover process $pid: $(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null)"
            kill -KILL "$pid" 2>/dev/null || true
        done
        rc=1
    fi
    rm -rf -- "$TMP"
    if [[ $rc == 0 ]]; then log "passed"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The test becomes a child subreaper: supervisors and QEMUs of a server it stopped or killed
# become its children, and it reaps them. In the background + wait, so a signal to this script
# runs the trap at once.
rc=0
PLASMAVMC=$BIN/plasmavmc PLASMAVMC_GUEST_DIR=$GUEST PROTO_DIR=$REPO/proto GRPC_E2E_TMP=$TMP \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    "$VENV/bin/python" "$REPO/Tests/grpc/e2e_test.py" "$@" &
TEST_PID=$!
wait "$TEST_PID" || rc=$?
TEST_PID=""
exit "$rc"
