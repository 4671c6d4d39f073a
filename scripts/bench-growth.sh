#!/usr/bin/env bash
# Cost as the tables grow: one worker loads RECORDS generated orders (piped on standard input) into empty
# PostgreSQL tables (`kind = "postgres"`, batch 5,000, the Rust orders rule), and the ledger's `loaded_at` gives
# the rate over the 100,000 records that end at 100,000, 1,000,000 and 5,000,000 loaded (those within RECORDS),
# each as a ratio to the first. Prints one table; the figures in docs/PERFORMANCE.md come from it.
#
#   scripts/bench-growth.sh [RECORDS]     default 1000000 (5000000 for the last row: about two minutes more)
#   WEIR_BENCH_BIN=PATH                   run that weir binary instead of building one
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
n=${1:-1000000}
work=$(mktemp -d)
bench_db_prefix="weir_bench_growth_$$"
# shellcheck source=scripts/bench-db.sh
source scripts/bench-db.sh
trap 'rm -rf "$work"; drop_db load >/dev/null 2>&1 || true' EXIT

eval "$(scripts/services.sh)"
scripts/build-plugins.sh >/dev/null
if [ -n "${WEIR_BENCH_BIN:-}" ]; then
  weir=$WEIR_BENCH_BIN
else
  cargo build --release --locked -p weir --bin weir >&2
  weir="$CARGO_TARGET_DIR/release/weir"
fi

url=$(fresh_db load)
cfg="$work/weir.toml"
sed -e "s|^path = \"orders.jsonl\"|path = \"-\"\nname = \"growth\"|" \
    -e "s|^dir = \"out/raw\"|dir = \"$work/raw\"|" \
    -e "s|^plugin = .*|plugin = \"$root/plugins/dist/orders.wasm\"\ninstances = 2|" \
    -e "s|^kind = \"sqlite\"|kind = \"postgres\"|" \
    -e "s|^path = \"\${WEIR_QUICKSTART_DB:-out/weir.db}\"|url = \"$url\"\nconnections = 2|" \
    -e "s|^max_records = 4|max_records = 5000|" \
    examples/quickstart/weir.toml > "$cfg"

echo "loading $n records ..." >&2
start=$(date +%s.%N)
python3 benches/gen_orders.py "$n" | WEIR_LOG=warn "$weir" run -c "$cfg" >/dev/null
end=$(date +%s.%N)

printf '| loaded so far | records/s over the last 100,000 | × at 100,000 |\n|---:|---:|---:|\n'
base=
for size in 100000 1000000 5000000; do
  [ "$size" -le "$n" ] || continue
  rate=$(psql -X -qAt "$url" -c "
    WITH b AS (SELECT loaded_at, sum(records_in) OVER (ORDER BY loaded_at) AS n FROM weir_batches)
    SELECT round((max(n) - min(n)) / extract(epoch FROM max(loaded_at) - min(loaded_at)))
    FROM b WHERE n > $size - 100000 AND n <= $size")
  base=${base:-$rate}
  awk -v s="$size" -v r="$rate" -v b="$base" 'BEGIN { printf "| %d | %d | %.2f |\n", s, r, r / b }'
done
awk -v n="$n" -v a="$start" -v b="$end" 'BEGIN { printf "\nwhole load: %d records in %.1f s (%.0f records/s, generation included); %s\n", n, b - a, n / (b - a), "'"$(nproc)"' cores" }'
