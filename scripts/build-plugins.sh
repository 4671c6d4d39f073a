#!/usr/bin/env bash
# Builds the rule plugins (plugins/) and the test plugins (tests/plugins/) for wasm32-wasip2 and copies the
# components to plugins/dist/, and the rules in other languages: Python (componentize-py, pinned, in a venv
# under /var/tmp), JavaScript (componentize-js, pinned, npm under /var/tmp) and C (clang + wasi-libc from Debian,
# wit-bindgen-cli pinned under /var/tmp). Adds the wasm32-wasip2 target when it is missing. Components not built by a weir SDK are
# stamped with the contract version (scripts/stamp.py).
#   scripts/build-plugins.sh --quickstart   only the Rust orders rule (what scripts/quickstart.sh runs)
set -euo pipefail
quickstart=
case "${1:-}" in
  --quickstart) quickstart=1 ;;
  "") ;;
  *) echo "usage: scripts/build-plugins.sh [--quickstart]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

if [ -n "$quickstart" ]; then
  echo "==> building the orders rule (wasm32-wasip2)"
  (cd "$root/plugins" && cargo build --release --target wasm32-wasip2 --locked -p orders)
  mkdir -p "$root/plugins/dist"
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/orders.wasm" "$root/plugins/dist/orders.wasm"
  exit 0
fi
echo "==> building plugins (wasm32-wasip2)"
mkdir -p "$root/plugins/dist"
# The Rust rules against contract 0.1 first (the SDK's contract-0-1 feature), as orders-v01, misbehave-v01
# and fields-v01:
# the host runs both versions, and the suites and benches compare them.
(cd "$root/plugins" && cargo build --release --target wasm32-wasip2 --locked -p orders --features contract-0-1)
cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/orders.wasm" "$root/plugins/dist/orders-v01.wasm"
for name in misbehave fields; do
  (cd "$root/tests/plugins" && cargo build --release --target wasm32-wasip2 --locked -p $name --features contract-0-1)
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$name.wasm" "$root/plugins/dist/$name-v01.wasm"
done
(cd "$root/plugins" && cargo build --release --target wasm32-wasip2 --locked)
(cd "$root/tests/plugins" && cargo build --release --target wasm32-wasip2 --locked)
for name in orders misbehave hostile fields; do
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$name.wasm" "$root/plugins/dist/$name.wasm"
done
# Python: componentize-py bundles CPython and the app into a component.
py_venv=${WEIR_PY_PLUGINS_VENV:-/var/tmp/weir-py-plugins}
if [ ! -x "$py_venv/bin/componentize-py" ]; then
  echo "==> installing componentize-py (PyPI) into $py_venv"
  python3 -m venv "$py_venv"
  "$py_venv/bin/pip" install -q 'componentize-py==0.25.0'
fi
contract=$(sed -n 's/^package weir:rules@\(.*\);$/\1/p' "$root/wit/rules.wit")
# A Python component is rebuilt only when its sources or the contract change. The one helper builds either
# contract version, by the wit folder it is given: wit/v0.2 (packed rows) or wit (0.1).
build_py() { # name source-folder wit-folder
  local out="$root/plugins/dist/$1.wasm"
  local src version
  version=$(sed -n 's/^package weir:rules@\(.*\);$/\1/p' "$root/$3/rules.wit")
  src=$(cat "$root"/plugins/python/weir_rule/*.py "$root"/plugins/python/weir_rule/*.so "$root/$2"/*.py \
    "$root/$3/rules.wit" | sha256sum | cut -c1-16)
  if [ ! -f "$out" ] || [ "$(cat "$out.src" 2>/dev/null)" != "$src" ]; then
    echo "==> building $2 against weir:rules@$version (componentize-py)"
    (cd "$root" && "$py_venv/bin/componentize-py" -d "$3" -w rule componentize app \
       -p plugins/python -p "$2" -o "$out" >/dev/null)
    python3 "$root/scripts/stamp.py" "$version" "$out"
    echo "$src" > "$out.src"
  fi
}
build_py orders-py plugins/orders-py wit/v0.2
build_py orders-py-v01 plugins/orders-py wit
build_py misbehave-py tests/plugins/misbehave-py wit/v0.2
build_py misbehave-py-v01 tests/plugins/misbehave-py wit

# JavaScript: componentize-js (StarlingMonkey) through plugins/js/build.mjs.
js_dir=${WEIR_JS_PLUGINS_DIR:-/var/tmp/weir-js-plugins}
if [ ! -d "$js_dir/node_modules/@bytecodealliance/componentize-js" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "==> installing Node.js (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nodejs npm
  fi
  echo "==> installing componentize-js (npm) into $js_dir"
  mkdir -p "$js_dir" && npm install -s --prefix "$js_dir" @bytecodealliance/componentize-js@0.23.0
fi
cp "$root/plugins/js/build.mjs" "$js_dir/build.mjs"   # resolves componentize-js from its own folder
# The helper builds either contract version, by the wit folder build.mjs is given.
build_js() { # name app.js wit-folder [--aot]
  local out="$root/plugins/dist/$1.wasm"
  local src version
  version=$(sed -n 's/^package weir:rules@\(.*\);$/\1/p' "$root/$3/rules.wit")
  src=$(cat "$root"/plugins/js/*.js "$root/plugins/js/build.mjs" "$root/$2" "$root/$3/rules.wit" | sha256sum | cut -c1-16)${4:-}
  if [ ! -f "$out" ] || [ "$(cat "$out.src" 2>/dev/null)" != "$src" ]; then
    echo "==> building $2 against weir:rules@$version (componentize-js${4:+, ahead of time})"
    (cd "$root" && node "$js_dir/build.mjs" "$2" "$out" "$3" ${4:-})
    python3 "$root/scripts/stamp.py" "$version" "$out"
    echo "$src" > "$out.src"
  fi
}
build_js orders-js plugins/orders-js/app.js wit/v0.2
build_js orders-js-v01 plugins/orders-js/app.js wit
build_js fields-js tests/plugins/fields-js/app.js wit/v0.2
build_js fields-js-v01 tests/plugins/fields-js/app.js wit
# WEIR_JS_AOT=1 (scripts/test.sh --long, the rule benches): the same rule built ahead of time (`build.mjs --aot`),
# with weval 0.5 from crates.io (about ten minutes to build the first time, so not by default).
if [ "${WEIR_JS_AOT:-}" = 1 ]; then
  weval_root=${WEIR_WEVAL_ROOT:-/var/tmp/weir-weval}
  if [ ! -x "$weval_root/bin/weval" ]; then
    echo "==> installing weval 0.5.0 (crates.io) into $weval_root"
    CARGO_TARGET_DIR="$weval_root/target" cargo install -q weval --version 0.5.0 --locked --root "$weval_root"
    rm -rf "$weval_root/target"
  fi
  export WEIR_WEVAL="$weval_root/bin/weval"
  build_js orders-js-aot plugins/orders-js/app.js wit/v0.2 --aot
fi

# C: clang + wasi-libc (Debian), bindings from wit-bindgen-cli (crates.io, pinned), linked by rustup's
# wasm-component-ld, through plugins/c/build.sh.
c_tools=${WEIR_C_TOOLS:-/var/tmp/weir-c-tools}
c_missing=0
command -v clang >/dev/null 2>&1 || c_missing=1
command -v wasm-ld >/dev/null 2>&1 || command -v wasm-ld-14 >/dev/null 2>&1 || c_missing=1
[ -d /usr/include/wasm32-wasi ] || c_missing=1
compgen -G '/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a' >/dev/null || c_missing=1
if [ "$c_missing" = 1 ]; then
  echo "==> installing clang, lld and wasi-libc (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq clang lld wasi-libc libclang-rt-14-dev-wasm32
fi
if [ ! -x "$c_tools/bin/wit-bindgen" ]; then
  echo "==> installing wit-bindgen-cli 0.61.1 (crates.io) into $c_tools"
  cargo install -q --locked wit-bindgen-cli --version 0.61.1 --root "$c_tools"
fi
# The Python helper's allocator module is checked in (`weir plugin new` writes it into new projects): it must
# be what its source builds to.
alloc_so=plugins/python/weir_rule/_alloc.cpython-314-wasm32-wasi.so
"$root/plugins/python/build-alloc.sh" "$root/plugins/dist/_alloc.so"
if ! cmp -s "$root/plugins/dist/_alloc.so" "$root/$alloc_so"; then
  echo "$alloc_so is not what plugins/python/weir_rule/_alloc.c builds to: run plugins/python/build-alloc.sh and commit it" >&2
  exit 1
fi
# The one helper builds either contract version, by the wit folder it is given (plugins/c/build.sh).
build_c() { # name wit-folder source.c [CFLAGS]
  local out="$root/plugins/dist/$1.wasm"
  local src
  src=$( (cat "$root"/plugins/c/* "$root/$3" "$root/$2/rules.wit"; echo "${4:-}") | sha256sum | cut -c1-16)
  if [ ! -f "$out" ] || [ "$(cat "$out.src" 2>/dev/null)" != "$src" ]; then
    echo "==> building $3 ${4:+$4 }against $2 (clang, wasi-libc)"
    CFLAGS="${4:-}" WEIR_WIT="$root/$2" WIT_BINDGEN="$c_tools/bin/wit-bindgen" "$root/plugins/c/build.sh" "$out" "$root/$3"
    echo "$src" > "$out.src"
  fi
}
build_c orders-c wit/v0.2 plugins/orders-c/orders.c
build_c orders-c-v01 wit plugins/orders-c/orders.c
# Version 2 of the orders rule, for the shadow-run tests (tests/reconcile.rs).
build_c orders-c-v2 wit/v0.2 plugins/orders-c/orders.c -DORDERS_V2
# Every record field, as the C helper reads it on each version (tests/conformance.rs).
build_c fields-c wit/v0.2 tests/plugins/fields-c/fields.c
build_c fields-c-v01 wit tests/plugins/fields-c/fields.c

echo "==> plugins in plugins/dist: $(cd "$root/plugins/dist" && echo *.wasm)"
