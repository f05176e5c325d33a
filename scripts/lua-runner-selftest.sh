#!/usr/bin/env bash
# Self-tests of the Lua test runner (stdlib/plasma/test.lua, testmain.lua) and the type stubs,
# with plain lua5.4 and a fake vm API: no Swift build, no QEMU. Prints one line per check and
# "N passed, N failed" last; exits non-zero if any check failed. Extra arguments: a Lua pattern
# selecting checks by name.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in lua5.4 python3; do
  command -v "$tool" >/dev/null || { echo "lua-runner-selftest: $tool is missing (apt-get install -y lua5.4 python3)" >&2; exit 2; }
done

exec lua5.4 Tests/LuaRunnerTests/run.lua "$@"
