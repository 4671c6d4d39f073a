#!/usr/bin/env bash
# Reconcile benchmark: loads RECORDS orders (file → local RAW → Rust orders rule → PostgreSQL), then times
# `weir reconcile` over all of it (RAW read back, the recorded rule re-run on every record, every final row
# read and compared field by field), and prints one table.
#
#   scripts/bench-reconcile.sh [RECORDS]     default 1000000; the figure in docs/PERFORMANCE.md comes from this
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
n=${1:-1000000}
work=$(mktemp -d)
db="weir_bench_reconcile_$$"
# WEIR_BENCH_KEEP=1 keeps the loaded database and RAW (printed at the end) for more runs of reconcile.
if [ -z "${WEIR_BENCH_KEEP:-}" ]; then
  trap 'rm -rf "$work"; psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
fi

eval "$(scripts/services.sh)"
scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p weir --bin weir >&2
weir="$CARGO_TARGET_DIR/release/weir"

python3 benches/gen_orders.py "$n" > "$work/orders.jsonl"
psql -X -q "$WEIR_PG_ADMIN_URL" -c "CREATE DATABASE $db" >/dev/null
url="${WEIR_PG_ADMIN_URL%/*}/$db"
psql -X -q "$url" >/dev/null <<'SQL'
CREATE DOMAIN super AS jsonb;
CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;
SQL
cfg="$work/weir.toml"
sed -e "s|^path = \"orders.jsonl\"|path = \"$work/orders.jsonl\"|" \
    -e "s|^dir = \"out/raw\"|dir = \"$work/raw\"|" \
    -e "s|^plugin = .*|plugin = \"$root/plugins/dist/orders.wasm\"\ninstances = 2|" \
    -e "s|^kind = \"sqlite\"|kind = \"postgres\"|" \
    -e "s|^path = \"\${WEIR_QUICKSTART_DB:-out/weir.db}\"|url = \"$url\"\nconnections = 2|" \
    -e "s|^max_records = 4|max_records = 5000|" \
    examples/quickstart/weir.toml > "$cfg"

echo "loading $n records ..." >&2
read -r load_secs _ < <(WEIR_LOG=warn python3 benches/measure.py "$weir" run -c "$cfg")
rows=$(psql -X -qAt "$url" -c "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_lines)")
echo "reconciling ..." >&2
read -r secs rss < <(MEASURE_STDOUT="$work/report.json" WEIR_LOG=warn python3 benches/measure.py \
  "$weir" reconcile -c "$cfg" --json)
problems=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
p = r["partitions"].values()
print(sum(x["unaccounted"] + x["missing_rows"] + x["orphan_rows"] + x["drifted_fields"] for x in p),
      sum(x["raw_records"] for x in p), r["objects"])' "$work/report.json")
read -r found raw objects <<<"$problems"

printf '| step | records | final rows | RAW objects | seconds | records/s | peak RSS MiB | problems |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
awk -v n="$n" -v r="$rows" -v s="$load_secs" 'BEGIN { printf "| load (weir run) | %d | %d | | %.1f | %.0f | | |\n", n, r, s, n / s }'
awk -v n="$raw" -v r="$rows" -v o="$objects" -v s="$secs" -v m="$rss" -v p="$found" \
  'BEGIN { printf "| weir reconcile | %d | %d | %d | %.1f | %.0f | %s | %d |\n", n, r, o, s, n / s, m, p }'
[ -z "${WEIR_BENCH_KEEP:-}" ] || echo "kept: config $cfg (database $db)" >&2
