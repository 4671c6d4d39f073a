#!/usr/bin/env bash
# The compiler's constant globals (host/src/rules/fold.rs), measured on the Python orders rule: checks the
# component gives the same outcomes compiled as it is (WEIR_WASM_FOLD_GLOBALS=0) and with its constant
# globals folded (the default), then times the two in turns beside the same rule in native CPython
# (docs/PERFORMANCE.md, "Constant globals").
#   benches/fold_globals.sh INPUT.jsonl [ROUNDS] [COMPONENT]   (default plugins/dist/orders-py.wasm; needs
#   the release weir and scripts/build-plugins.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
input=${1:?usage: benches/fold_globals.sh INPUT.jsonl [ROUNDS] [COMPONENT]}
rounds=${2:-3}
wasm=${3:-$root/plugins/dist/orders-py.wasm}
weir=${WEIR:-${CARGO_TARGET_DIR:-/var/tmp/weir-target}/release/weir}
config="$root/examples/quickstart/weir.toml"
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
chmod 700 "$cache"
export WEIR_CACHE_DIR=$cache

run() { WEIR_WASM_FOLD_GLOBALS=$1 "$weir" plugin "$2" "$wasm" --input "$input" --config "$config" "${@:3}" 2>/dev/null; }
[ "$(run 0 test | sha256sum)" = "$(run 1 test | sha256sum)" ] || { echo "folded and as built disagree on $input" >&2; exit 1; }

echo "records/s, batch 100 / 1,000 (weir plugin bench --secs 2; benches/native_rule.py INPUT 2)"
echo
echo "| round | as built (WEIR_WASM_FOLD_GLOBALS=0) | folded (default) | native CPython | folded / as built | folded / native |"
echo "|---|---:|---:|---:|---:|---:|"
rates() { grep -E '^\| +(100|1000) +\|' | awk -F'|' '{gsub(/ /, "", $3); printf "%s ", $3} END {print ""}'; }
for r in $(seq "$rounds"); do
  read -r a100 a1000 < <(run 0 bench --secs 2 | rates)
  read -r f100 f1000 < <(run 1 bench --secs 2 | rates)
  read -r n100 n1000 < <(python3 "$root/benches/native_rule.py" "$input" 2 | grep '^| orders-py' | awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4}')
  awk -v r="$r" -v a1="$a100" -v a2="$a1000" -v f1="$f100" -v f2="$f1000" -v n1="$n100" -v n2="$n1000" 'BEGIN {
    printf "| %s | %s / %s | %s / %s | %s / %s | %.2f / %.2f | %.2f / %.2f |\n", r, a1, a2, f1, f2, n1, n2, f1 / a1, f2 / a2, f1 / n1, f2 / n2 }'
done
