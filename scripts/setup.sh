#!/usr/bin/env bash
# Installs what plasmavmc needs on Debian 12 (QEMU, qemu-img, liblua5.4, the guest's build tools) and
# builds the test guest into .cache/guest. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v python3 >/dev/null || need+=(python3)
dpkg -s liblua5.4-dev >/dev/null 2>&1 || need+=(liblua5.4-dev)
command -v lua5.4 >/dev/null || need+=(lua5.4)
dpkg -s libedit-dev >/dev/null 2>&1 || need+=(libedit-dev)
command -v tmux >/dev/null || need+=(tmux)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v openssl >/dev/null || need+=(openssl)   # certificates for the TLS tests
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "setup: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
scripts/build-guest.sh >/dev/null
