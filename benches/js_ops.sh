#!/usr/bin/env bash
# µs per operation inside a JavaScript rule (benches/js_ops.js), for docs/PERFORMANCE.md:
#   benches/js_ops.sh [WEIR_BINARY]
# Needs componentize-js as scripts/build-plugins.sh installs it, and a weir binary (default: weir on the PATH).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weir=${1:-weir}
js_dir=${WEIR_JS_PLUGINS_DIR:-/var/tmp/weir-js-plugins}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
node "$js_dir/build.mjs" "$root/benches/js_ops.js" "$work/ops.wasm" "$root/wit/v0.2" >/dev/null
python3 "$root/scripts/stamp.py" 0.2.0 "$work/ops.wasm"
python3 "$root/benches/gen_orders.py" 5000 > "$work/orders.jsonl"
per_record() { # op → µs per record at batch 100
  sed "s/^\[rule\]/[rule]\nsettings = { op = \"$1\" }/" "$root/examples/quickstart/weir.toml" > "$work/weir.toml"
  "$weir" plugin bench "$work/ops.wasm" --input "$work/orders.jsonl" --config "$work/weir.toml" --secs 2 2>/dev/null | awk -F'|' '$2 ~ /^ *100 *$/ {print $4 + 0}'
}
base=$(per_record none)
echo "| operation (100 per record) | µs per record | µs per operation |"
echo "|---|---:|---:|"
echo "| none (decode, JSON.parse, drop) | $base | |"
for op in loop call prop obj arr regex bigint encode encodeInto charcode setu32 index template stringify; do
  us=$(per_record "$op")
  echo "| $op | $us | $(python3 -c "print(f'{($us - $base) / 100:.2f}')") |"
done
