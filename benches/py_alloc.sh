#!/usr/bin/env bash
# The Python helper's allocator module (plugins/python/weir_rule/_alloc.c, pymalloc for the CPython inside the
# component), measured: builds the Python orders rule with the helper as committed and with the module left
# out, checks both give the same outcomes, then times them in turns beside the same rule in native CPython
# (docs/PERFORMANCE.md, "pymalloc for the sandboxed CPython").
#   benches/py_alloc.sh INPUT.jsonl [ROUNDS]    (needs target/release/weir and scripts/build-plugins.sh's venv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
input=${1:?usage: benches/py_alloc.sh INPUT.jsonl [ROUNDS]}
rounds=${2:-3}
weir=${WEIR:-${CARGO_TARGET_DIR:-/var/tmp/weir-target}/release/weir}
cpy=${COMPONENTIZE_PY:-${WEIR_PY_PLUGINS_VENV:-/var/tmp/weir-py-plugins}/bin/componentize-py}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

mkdir -p "$out/without"
cp -r "$root/plugins/python/weir_rule" "$out/without/"
rm -rf "$out/without/weir_rule/__pycache__" "$out/without/weir_rule/"*.so
(cd "$root" && "$cpy" -d wit/v0.2 -w rule componentize app -p plugins/python -p plugins/orders-py \
   -o "$out/with.wasm" >/dev/null && "$cpy" -d wit/v0.2 -w rule componentize app -p "$out/without" \
   -p plugins/orders-py -o "$out/without.wasm" >/dev/null)
for v in with without; do python3 "$root/scripts/stamp.py" 0.2.0 "$out/$v.wasm" >/dev/null; done

config="$root/examples/quickstart/weir.toml"
a=$("$weir" plugin test "$out/with.wasm" --input "$input" --config "$config" 2>/dev/null | sha256sum)
b=$("$weir" plugin test "$out/without.wasm" --input "$input" --config "$config" 2>/dev/null | sha256sum)
[ "$a" = "$b" ] || { echo "the two builds disagree on $input" >&2; exit 1; }

echo "records/s, batch 100 / 1,000 (weir plugin bench --secs 2; benches/native_rule.py INPUT 2)"
echo
echo "| round | without the module | with it (committed) | native CPython | with / without | with / native |"
echo "|---|---:|---:|---:|---:|---:|"
rates() { grep -E '^\| +(100|1000) +\|' | awk -F'|' '{gsub(/ /, "", $3); printf "%s ", $3} END {print ""}'; }
for r in $(seq "$rounds"); do
  read -r w100 w1000 < <("$weir" plugin bench "$out/without.wasm" --input "$input" --config "$config" --secs 2 2>/dev/null | rates)
  read -r c100 c1000 < <("$weir" plugin bench "$out/with.wasm" --input "$input" --config "$config" --secs 2 2>/dev/null | rates)
  read -r n100 n1000 < <(python3 "$root/benches/native_rule.py" "$input" 2 | grep '^| orders-py' | awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4}')
  awk -v r="$r" -v w1="$w100" -v w2="$w1000" -v c1="$c100" -v c2="$c1000" -v n1="$n100" -v n2="$n1000" 'BEGIN {
    printf "| %s | %s / %s | %s / %s | %s / %s | %.2f / %.2f | %.2f / %.2f |\n", r, w1, w2, c1, c2, n1, n2, c1 / w1, c2 / w2, c1 / n1, c2 / n2 }'
done
