#!/usr/bin/env bash
# The binary to ship: weir stripped of its debug info and symbols (about 50 MB instead of about 370 MB with line
# tables), the debug info split into `weir.debug` beside it and linked by a `.gnu_debuglink` section (backtraces,
# gdb and addr2line find it there or under /usr/lib/debug), and `SHA256SUMS` for both.
#
#   scripts/dist.sh [OUT_DIR]                  release build, then package; default OUT_DIR dist/
#   scripts/dist.sh --binary PATH [OUT_DIR]    package a binary built already
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
binary=
if [ "${1:-}" = "--binary" ]; then
  binary=${2:?"--binary needs the path of a weir binary"}
  shift 2
fi
out=${1:-dist}
if [ -z "$binary" ]; then
  cargo build --release --locked -p weir --bin weir >&2
  binary="$CARGO_TARGET_DIR/release/weir"
fi
command -v objcopy >/dev/null || { echo "dist: objcopy is needed (Debian package binutils)" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out/weir" "$out/weir.debug" "$out/SHA256SUMS"
objcopy --only-keep-debug --compress-debug-sections=zlib "$binary" "$out/weir.debug"
objcopy --strip-all --add-gnu-debuglink="$out/weir.debug" "$binary" "$out/weir"
chmod 0755 "$out/weir"
chmod 0644 "$out/weir.debug"
(cd "$out" && sha256sum weir weir.debug > SHA256SUMS)
ls -l "$out/weir" "$out/weir.debug" >&2
