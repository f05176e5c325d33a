#!/usr/bin/env bash
# Installs plasmavmc: builds release (swift build -c release), then copies
#   PREFIX/bin/plasmavmc and PREFIX/bin/plasmavmc-supervisor (every executable of EXECUTABLES),
#   PREFIX/share/plasmavmc/stdlib/          the Lua stdlib, where plasmavmc looks for it,
#   PREFIX/share/bash-completion/completions/plasmavmc, PREFIX/share/zsh/site-functions/_plasmavmc,
#   PREFIX/share/fish/vendor_completions.d/plasmavmc.fish   shell completions.
#
#   scripts/install.sh [--prefix DIR] [--bin-dir DIR]
#
# --prefix DIR   where to install (default /usr/local)
# --bin-dir DIR  install the executables already built in DIR instead of building
#                (e.g. .build/release); used by the tests
# Exit status: 0 installed; 2 bad usage or nothing to install; another the build or a copy failed.
set -euo pipefail

# Executable products to install, all required: plasmavmc finds its supervisor beside itself.
EXECUTABLES=(plasmavmc plasmavmc-supervisor)

usage() {
  echo "install.sh: $1" >&2
  echo "usage: scripts/install.sh [--prefix DIR] [--bin-dir DIR]" >&2
  exit 2
}

prefix=/usr/local
bin_dir=
while (($#)); do
  case "$1" in
    --prefix) (($# >= 2)) && [[ -n "$2" ]] || usage "--prefix needs a folder"; prefix=$2; shift 2 ;;
    --bin-dir) (($# >= 2)) && [[ -n "$2" ]] || usage "--bin-dir needs a folder"; bin_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) usage "unknown option $1" ;;
  esac
done
# Relative folders are the caller's, not the repository's.
[[ "$prefix" == /* ]] || prefix="$PWD/$prefix"
[[ -z "$bin_dir" || "$bin_dir" == /* ]] || bin_dir="$PWD/$bin_dir"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "$bin_dir" ]]; then
  swift build -c release
  bin_dir=$(swift build -c release --show-bin-path)
fi
for exe in "${EXECUTABLES[@]}"; do
  [[ -x "$bin_dir/$exe" ]] ||
    usage "no $exe in $bin_dir; build it first (swift build -c release) or leave out --bin-dir"
done

share="$prefix/share/plasmavmc"
install -d "$prefix/bin" "$share"
for exe in "${EXECUTABLES[@]}"; do
  install -m 0755 "$bin_dir/$exe" "$prefix/bin/$exe"
  echo "installed $prefix/bin/$exe"
done

# Replace the stdlib as a whole: a file dropped from stdlib/ must not linger in the old copy.
rm -rf "$share/stdlib.new"
cp -R stdlib "$share/stdlib.new"
chmod -R u=rwX,go=rX "$share/stdlib.new"
rm -rf "$share/stdlib"
mv "$share/stdlib.new" "$share/stdlib"
echo "installed $share/stdlib"

plasmavmc="$prefix/bin/${EXECUTABLES[0]}"
completions=(
  "bash:$prefix/share/bash-completion/completions/plasmavmc"
  "zsh:$prefix/share/zsh/site-functions/_plasmavmc"
  "fish:$prefix/share/fish/vendor_completions.d/plasmavmc.fish"
)
for entry in "${completions[@]}"; do
  shell=${entry%%:*} file=${entry#*:}
  install -d "$(dirname "$file")"
  "$plasmavmc" completion "$shell" >"$file.tmp"
  mv "$file.tmp" "$file"
  chmod 0644 "$file"
done
echo "installed shell completions under $prefix/share"

version=$("$plasmavmc" --version)
echo "$version: run $plasmavmc --help"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH" ;;
esac
