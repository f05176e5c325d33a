#!/usr/bin/env bash
# Builds plasmavmc with AddressSanitizer and runs Lua plans through it: the embedding (C shim,
# error trampoline, coroutines, cancelled branches, interrupts) under ASan, with real QEMU.
# Exits non-zero on any ASan report or plan failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scratch=${ASAN_SCRATCH:-.build-asan}
swift build --scratch-path "$scratch" --sanitize=address --product plasmavmc
swift build --scratch-path "$scratch" --sanitize=address --product plasmavmc-supervisor
bin=$(swift build --scratch-path "$scratch" --sanitize=address --show-bin-path)/plasmavmc
export PLASMAVMC_RUNTIME_DIR=$(mktemp -d /tmp/pva.XXXXXX)
export PLASMAVMC_GUEST_DIR=${PLASMAVMC_GUEST_DIR:-.cache/guest}
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1
trap 'for d in "$PLASMAVMC_RUNTIME_DIR"/*/; do [ -d "$d" ] && "$bin" delete "$(basename "$d")" --force >/dev/null 2>&1; done; rm -rf "$PLASMAVMC_RUNTIME_DIR"' EXIT

passed=0
failed=0
check() {  # check WANT_STATUS LABEL ARGS...
    local want=$1 label=$2
    shift 2
    local log status=0
    log=$("$bin" "$@" 2>&1) || status=$?
    if [ "$status" = "$want" ] && ! grep -q "AddressSanitizer" <<<"$log"; then
        passed=$((passed + 1))
        echo "ok - $label"
    else
        failed=$((failed + 1))
        echo "not ok - $label (exit $status, wanted $want)"
        sed 's/^/# /' <<<"$log" | tail -40
    fi
}

check 0 "lifecycle plan" run Tests/plans/lifecycle.lua
check 0 "parallel boots" run Tests/plans/parallel.lua
check 0 "bad input" run Tests/plans/badinput.lua
check 0 "test runner over a folder" test Tests/plans
check 1 "uncaught error with <close> and ephemeral cleanup" run Tests/plans/failing.lua
check 5 "timeout of a spinning plan" run --timeout 3 Tests/plans/forever.lua asan-spin spin
check 2 "syntax error" run -e 'x = = 1'
check 1 "cancelled parallel branch" run -e 'vm.parallel(function() sleep(5) end, function() error("x") end)'
check 1 "deep recursion" run -e 'local function f(n) return f(n + 1) + 1 end f(1)'
check 0 "many small calls" run -e 'for i = 1, 200000 do __plasma_now() end'
# Issue 8: interrupts that land anywhere, yields the scheduler refuses, numbers that never trap.
check 5 "timeout inside coroutine.wrap" run --timeout 2 -e 'coroutine.wrap(function() while true do end end)()'
check 5 "timeout swallowed by pcall" run --timeout 2 -e 'while true do pcall(function() while true do end end) end'
check 1 "yield to the scheduler" run -e 'coroutine.yield({})'
check 1 "fake parallel yield" run -e 'coroutine.yield({parallel = {}})'
check 1 "NaN sleep" run -e 'sleep(0/0)'
check 0 "vm calls in a plan's own coroutine" run -e 'print(coroutine.wrap(function() return #vm.list() end)(), vm.parallel())'
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
