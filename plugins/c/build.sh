#!/usr/bin/env bash
# Builds a weir rule written in C into a stamped WebAssembly component:
#   build.sh OUT.wasm rule.c [more.c ...]
# Needs: clang, wasm-ld (Debian: clang lld wasi-libc libclang-rt-14-dev-wasm32), `wit-bindgen` (cargo install
# wit-bindgen-cli) and rustup's wasm-component-ld (any Rust toolchain ships it).
# Environment: CFLAGS (added to the compiler's flags), WEIR_WIT (the contract folder, default: the wit/ folder beside this script's
# folder, two levels up (this repository) or in the current folder),
# WIT_BINDGEN, CC, WASM_LD.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT.wasm rule.c [more.c ...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$1; shift

wit=${WEIR_WIT:-}
for guess in "$here/../wit" "$here/../../wit" "$PWD/wit"; do
  [ -n "$wit" ] && break
  [ -f "$guess/rules.wit" ] && wit=$guess
done
[ -n "$wit" ] || { echo "build.sh: no wit/rules.wit found; set WEIR_WIT" >&2; exit 1; }
bindgen=${WIT_BINDGEN:-$(command -v wit-bindgen || true)}
[ -x "$bindgen" ] || { echo "build.sh: wit-bindgen not found: cargo install --locked wit-bindgen-cli --version 0.61.1" >&2; exit 1; }
cc=${CC:-clang}
wasm_ld=${WASM_LD:-$(command -v wasm-ld || command -v wasm-ld-14 || true)}
[ -n "$wasm_ld" ] || { echo "build.sh: wasm-ld not found (Debian: apt-get install lld)" >&2; exit 1; }
component_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/wasm-component-ld"
[ -x "$component_ld" ] || { echo "build.sh: $component_ld not found (rustup ships it)" >&2; exit 1; }

# Contract 0.2 (packed rows) or 0.1, by the WIT's package version.
version=$(sed -n 's/^package weir:rules@\(.*\);$/\1/p' "$wit/rules.wit")
# 0.2 builds the `rule-packed-batch` world: the batch comes in as one buffer that the helper reads in place,
# instead of a list of records whose every string the host lowers through a call to the guest's allocator.
case "$version" in
  0.2.*) contract_flag=-DWEIR_CONTRACT_0_2 world=rule-packed-batch ;;
  *) contract_flag= world=rule ;;
esac
bindings=${world//-/_}

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$bindgen" c "$wit" --world "$world" --out-dir "$gen" >/dev/null 2>&1 || "$bindgen" c "$wit" --world "$world" --out-dir "$gen"
# -O3 -flto: the rule, the helper and the bindings optimized as one program (the helper's small functions
# inlined into the rule): 10-14 % more records/s than -O2 per file (weir's docs/PERFORMANCE.md).
"$cc" --target=wasm32-wasi -O3 -flto -std=c11 -Wall -Wextra -Wno-unused-parameter -mexec-model=reactor $contract_flag ${CFLAGS:-} \
  -fuse-ld="$component_ld" -Wl,--wasm-ld-path="$wasm_ld" \
  -I "$here" -I "$gen" "$@" "$here/weir_rule.c" "$here/weir_json.c" "$gen/$bindings.c" "$gen/${bindings}_component_type.o" \
  -o "$out"

# The contract version as a `weir-contract` custom section (what the Rust SDK's export_rule! writes).
name=weir-contract
printf '\000'"$(printf '\\%03o' $((1 + ${#name} + ${#version})))"'\015%s%s' "$name" "$version" >> "$out"
