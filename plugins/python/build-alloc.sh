#!/usr/bin/env bash
# Builds weir_rule/_alloc.c (pymalloc for the CPython inside a componentize-py component) into the extension
# module the helper imports. Needs Debian's clang 14 and lld (scripts/build-plugins.sh installs them).
#   plugins/python/build-alloc.sh [OUT]   default: plugins/python/weir_rule/_alloc.cpython-314-wasm32-wasi.so
# scripts/build-plugins.sh rebuilds it and fails if the checked-in file differs, so a change to the source is
# committed with the module it builds to.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/weir_rule/_alloc.cpython-314-wasm32-wasi.so}
ld=$(command -v wasm-ld-14 || command -v wasm-ld)
obj=$(mktemp --suffix=.o)
trap 'rm -f "$obj"' EXIT
# LLVM 14 makes position-independent WebAssembly only for Emscripten; the module uses no C library, so the
# object links as a WASI shared library all the same (componentize-py links it by its dylink.0 section).
clang --target=wasm32-unknown-emscripten -O2 -fPIC -mbulk-memory -mmutable-globals -Wall -Werror \
  -c -o "$obj" "$here/weir_rule/_alloc.c"
"$ld" -shared --experimental-pic -o "$out" "$obj"
