#!/usr/bin/env bash
# Builds the rule plugins (plugins/) and the test plugins (tests/plugins/) for wasm32-wasip2 and copies the
# components to plugins/dist/. Adds the wasm32-wasip2 target when it is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "==> adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

echo "==> building plugins (wasm32-wasip2)"
(cd "$root/plugins" && cargo build --release --target wasm32-wasip2 --locked)
(cd "$root/tests/plugins" && cargo build --release --target wasm32-wasip2 --locked)

mkdir -p "$root/plugins/dist"
for name in orders misbehave; do
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$name.wasm" "$root/plugins/dist/$name.wasm"
done
echo "==> plugins in plugins/dist: $(cd "$root/plugins/dist" && echo *.wasm)"
