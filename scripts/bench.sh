#!/usr/bin/env bash
# End-to-end benchmark on one machine and one data set, printed as one table:
#   weir (file → local RAW → Rust orders rule → PostgreSQL staged merge) at several batch sizes,
#   the seed-style Python worker (benches/baseline/worker.py), the PostgreSQL server ceiling for the
#   same merge (rows generated inside the server: no client transfer; also with the stages analyzed) and the
#   client COPY floor (the same final rows copied into empty tables, nothing else). The last lines are the
#   ratios that read each figure against its limit and peer.
#
#   scripts/bench.sh [RECORDS]        default 200000; the numbers in docs/PERFORMANCE.md come from this
#   WEIR_BENCH_PEER_BIN=PATH          also runs that weir binary at batch 5000 and prints the ratio
#   WEIR_BENCH_QUICK=1                only the batch-5000 rows and what they are read against (the INSERT
#                                     fill, the peer, the Python worker, the ceilings, the COPY floor)
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
n=${1:-200000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

eval "$(scripts/services.sh)"
scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p weir --bin weir >&2
weir="$CARGO_TARGET_DIR/release/weir"
venv=${WEIR_BENCH_VENV:-/var/tmp/weir-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg2' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'psycopg2-binary==2.9.10' >&2
fi

python3 benches/gen_orders.py "$n" > "$work/orders.jsonl"
bytes=$(wc -c < "$work/orders.jsonl")

bench_db_prefix="weir_bench_$$"
# shellcheck source=scripts/bench-db.sh
source scripts/bench-db.sh

rows() { psql -X -qAt "$1" -c "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_lines)"; }

printf '| run | records | rows | seconds | records/s | rows/s | p50 ms | p99 ms | peak RSS MiB |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
line() { # name records rows seconds rss [p50 p99]
  awk -v name="$1" -v n="$2" -v r="$3" -v s="$4" -v m="$5" -v p50="${6:--}" -v p99="${7:--}" \
    'BEGIN { printf "| %s | %d | %d | %.2f | %.0f | %.0f | %s | %s | %s |\n", name, n, r, s, n / s, r / s, p50, p99, m }'
}

# weir's configuration for this data: the quickstart pointed at $work, PostgreSQL, batch size $2.
weir_config() { # name batch [input]
  local url=$1 batch=$2 input=${3:-$work/orders.jsonl} cfg="$work/weir-$RANDOM.toml"
  sed -e "s|^path = \"orders.jsonl\"|path = \"$input\"|" \
      -e "s|^dir = \"out/raw\"|dir = \"$work/raw-$RANDOM\"|" \
      -e "s|^plugin = .*|plugin = \"$root/plugins/dist/orders.wasm\"|" \
      -e "s|^kind = \"sqlite\"|kind = \"postgres\"|" \
      -e "s|^path = \"\${WEIR_QUICKSTART_DB:-out/weir.db}\"|url = \"$url\"|" \
      -e "s|^max_records = 4|max_records = $batch|" \
      examples/quickstart/weir.toml > "$cfg"
  echo "$cfg"
}

# Runs weir on a config; prints `seconds rss p50 p99` (latency from the run summary).
measure_weir() { # config [stdin-feed args...]
  local cfg=$1; shift
  "$weir" schema apply -c "$cfg" >/dev/null
  local secs rss
  if [ $# -gt 0 ]; then
    read -r secs rss < <(python3 benches/feed.py "$@" | MEASURE_STDOUT="$work/out" MEASURE_SAMPLES="$work/rss" \
      WEIR_LOG=warn python3 benches/measure.py "$weir" run -c "$cfg")
  else
    read -r secs rss < <(MEASURE_STDOUT="$work/out" MEASURE_SAMPLES="$work/rss" \
      WEIR_LOG=warn python3 benches/measure.py "$weir" run -c "$cfg")
  fi
  local lat
  lat=$(sed -n 's/^latency, receive to commit: p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/\1 \2/p' "$work/out")
  echo "$secs $rss ${lat:-- -}"
}

declare -A took
quick=${WEIR_BENCH_QUICK:-0}
batches="100 1000 5000 20000"
[ "$quick" = 1 ] && batches=5000
for batch in $batches; do
  url=$(fresh_db "w$batch")
  cfg=$(weir_config "$url" "$batch")
  read -r secs rss _ _ < <(measure_weir "$cfg")
  took[w$batch]=$secs
  line "weir, batch $batch" "$n" "$(rows "$url")" "$secs" "$rss"
  if [ "$batch" = 5000 ]; then # weir's final rows, for the client COPY floor below
    psql -X -q "$url" -c "\\copy orders TO '$work/orders.copy'" -c "\\copy order_lines TO '$work/order_lines.copy'"
  fi
  drop_db "w$batch"
done

# The Redshift-portable stage fill (multi-row INSERTs) on the same database, beside the binary COPY fill.
url=$(fresh_db insert)
cfg=$(weir_config "$url" 5000)
sed -i "s|^url = \"$url\"|url = \"$url\"\nstage_fill = { kind = \"insert\" }|" "$cfg"
read -r secs rss _ _ < <(measure_weir "$cfg")
took[insert]=$secs
line "weir, batch 5000, INSERT fill (the Redshift-portable path)" "$n" "$(rows "$url")" "$secs" "$rss"
drop_db insert

# WEIR_BENCH_PEER_BIN: a second weir binary (say one from another commit or build) at batch 5000, in
# the same run as the first, for a ratio between the two builds.
if [ -n "${WEIR_BENCH_PEER_BIN:-}" ]; then
  url=$(fresh_db peer)
  cfg=$(weir_config "$url" 5000)
  read -r secs rss _ _ < <(weir=$WEIR_BENCH_PEER_BIN measure_weir "$cfg")
  took[peer]=$secs
  line "weir, batch 5000, $WEIR_BENCH_PEER_BIN" "$n" "$(rows "$url")" "$secs" "$rss"
  drop_db peer
fi

# Parallel rule instances and sink connections, at batch 5000.
[ "$quick" = 1 ] || for knob in "instances = 2|rule.instances = 2" "connections = 2|sink.connections = 2"; do
  setting=${knob%%|*} label=${knob##*|}
  url=$(fresh_db knob)
  cfg=$(weir_config "$url" 5000)
  case $setting in
    instances*) sed -i "s|^batch_deadline_ms = 2000|batch_deadline_ms = 2000\n$setting|" "$cfg" ;;
    connections*) sed -i "s|^url = \"$url\"|url = \"$url\"\n$setting|" "$cfg" ;;
  esac
  read -r secs rss _ _ < <(measure_weir "$cfg")
  line "weir, batch 5000, $label" "$n" "$(rows "$url")" "$secs" "$rss"
  drop_db knob
done

# A steady 1,000 records/s from standard input for 60 s (batches close after 100 ms): latency and memory.
if [ "$quick" != 1 ]; then
steady_secs=${WEIR_BENCH_STEADY_SECS:-60}
stall_secs=${WEIR_BENCH_STALL_SECS:-60}
url=$(fresh_db steady)
cfg=$(weir_config "$url" 5000 -)
sed -i "s|^max_wait_ms = 250|max_wait_ms = 100|" "$cfg"
read -r secs rss p50 p99 < <(measure_weir "$cfg" "$work/orders.jsonl" 1000 "$steady_secs")
line "weir, steady 1,000 records/s for ${steady_secs} s" "$((1000 * steady_secs))" "$(rows "$url")" "$secs" "$rss" "$p50" "$p99"
drop_db steady

# The same feed with the sink stalled (its table locked) for 60 s in the middle: memory must stay bounded.
url=$(fresh_db stall)
cfg=$(weir_config "$url" 5000 -)
sed -i "s|^max_wait_ms = 250|max_wait_ms = 100|" "$cfg"
"$weir" schema apply -c "$cfg" >/dev/null
total=$((stall_secs + 40))
( sleep 20; psql -X -q "$url" -c "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep($stall_secs); COMMIT;" >/dev/null ) &
locker=$!
read -r secs rss p50 p99 < <(measure_weir "$cfg" "$work/orders.jsonl" 1000 "$total")
wait "$locker"
stalled_rss=$(awk -v a=20 -v b=$((20 + stall_secs)) '$1 >= a && $1 < b && $2 > m { m = $2 } END { printf "%.1f", m }' "$work/rss")
steady_rss=$(awk '$1 < 20 && $2 > m { m = $2 } END { printf "%.1f", m }' "$work/rss")
line "weir, 1,000 records/s, sink stalled ${stall_secs} s (RSS before / during the stall)" "$((1000 * total))" "$(rows "$url")" "$secs" "$steady_rss / $stalled_rss" "$p50" "$p99"
drop_db stall
fi

url=$(fresh_db python)
read -r secs rss < <(python3 benches/measure.py "$venv/bin/python" benches/baseline/worker.py "$work/orders.jsonl" "$url")
took[python]=$secs
line "Python worker (psycopg2, batch 5000)" "$n" "$(rows "$url")" "$secs" "$rss" - -

# The server ceiling: the same staged merge into weir's tables, rows generated by the server.
psql -X -q "$url" -c "DROP TABLE orders, order_lines" >/dev/null
"$weir" schema apply -c "$(weir_config "$url" 5000)" >/dev/null
ceiling_sql() { # analyze (0 or 1)
  echo "CREATE TEMP TABLE s_o (LIKE orders); CREATE TEMP TABLE s_l (LIKE order_lines);"
  local analyze=
  [ "$1" = 1 ] && analyze="ANALYZE s_o; ANALYZE s_l;"
  for ((first = 0; first < n; first += 5000)); do
    last=$((first + 4999 < n - 1 ? first + 4999 : n - 1))
    cat <<SQL
BEGIN;
DELETE FROM s_o; DELETE FROM s_l;
INSERT INTO s_o SELECT 'o-' || lpad(g::text, 8, '0'), 'c-' || (g % 10000), TIMESTAMPTZ '2026-11-21 10:00:00+00', 'EUR',
  44.98, 2, 'ES', JSON_PARSE('{"country":"ES","city":"Madrid"}'), 'file/orders.jsonl/' || g, 'b', 'd',
  TIMESTAMPTZ '2026-11-21 10:00:00+00' FROM generate_series($first, $last) g;
INSERT INTO s_l SELECT 'o-' || lpad(g::text, 8, '0'), l, 'SKU-' || l, l, 19.99, 19.99 * l, 'file/orders.jsonl/' || g,
  'b', 'd', TIMESTAMPTZ '2026-11-21 10:00:00+00' FROM generate_series($first, $last) g, generate_series(1, 1 + g % 2) l;
$analyze
DELETE FROM orders USING s_o WHERE orders.order_id = s_o.order_id;
INSERT INTO orders SELECT * FROM s_o;
DELETE FROM order_lines USING s_l WHERE order_lines.order_id = s_l.order_id AND order_lines.line_no = s_l.line_no;
INSERT INTO order_lines SELECT * FROM s_l;
COMMIT;
SQL
  done
}
ceiling_sql 0 > "$work/ceiling.sql"
read -r secs rss < <(python3 benches/measure.py psql -X -q "$url" -f "$work/ceiling.sql")
took[ceiling]=$secs
line "PostgreSQL ceiling (server-generated rows, batch 5000)" "$n" "$(rows "$url")" "$secs" "-"
psql -X -q "$url" -c "DROP TABLE orders, order_lines" >/dev/null
"$weir" schema apply -c "$(weir_config "$url" 5000)" >/dev/null
ceiling_sql 1 > "$work/ceiling-analyzed.sql"
read -r secs rss < <(python3 benches/measure.py psql -X -q "$url" -f "$work/ceiling-analyzed.sql")
took[analyzed]=$secs
line "PostgreSQL ceiling, stages analyzed" "$n" "$(rows "$url")" "$secs" "-"
drop_db python

# The client COPY floor: the same final rows copied into empty tables by one client, nothing else.
url=$(fresh_db floor)
"$weir" schema apply -c "$(weir_config "$url" 5000)" >/dev/null
read -r secs rss < <(python3 benches/measure.py psql -X -q "$url" -c "\\copy orders FROM '$work/orders.copy'" \
  -c "\\copy order_lines FROM '$work/order_lines.copy'")
took[floor]=$secs
line "client COPY floor (the final rows into empty tables)" "$n" "$(rows "$url")" "$secs" "-"
drop_db floor

echo
ratio() { awk -v a="$2" -v b="$3" -v what="$1" 'BEGIN { printf "%s: %.2f\n", what, b / a }'; }
ratio "weir batch 5000 / PostgreSQL ceiling (records/s)" "${took[w5000]}" "${took[ceiling]}"
ratio "weir batch 5000 / ceiling with analyzed stages" "${took[w5000]}" "${took[analyzed]}"
ratio "weir batch 5000 / Python worker" "${took[w5000]}" "${took[python]}"
ratio "weir batch 5000 / client COPY floor" "${took[w5000]}" "${took[floor]}"
ratio "weir batch 5000, INSERT fill / PostgreSQL ceiling" "${took[insert]}" "${took[ceiling]}"
[ -n "${took[peer]:-}" ] && ratio "weir batch 5000 / $WEIR_BENCH_PEER_BIN" "${took[w5000]}" "${took[peer]}"
echo
echo "data: $n records, $bytes bytes ($((bytes / n)) bytes/record); machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
