#!/usr/bin/env bash
# `weir serve` under loopback load from a second process (the `http_load` example), beside the file source on
# the same data and the same sink, in one run: one Markdown table and the ratio of each HTTP row to the file
# source's records/s. A request is answered only once its records committed, so records/s here is the rate
# at which records become durable, and the latency is each request's time to its 200.
#
#   scripts/bench-http.sh [RECORDS]        default 100000; the numbers in docs/PERFORMANCE.md come from this
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
n=${1:-100000}
work=$(mktemp -d)
trap '[ -z "${server:-}" ] || kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

eval "$(scripts/services.sh)"
scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p weir --bin weir --example http_load >&2
weir="$CARGO_TARGET_DIR/release/weir"
load="$CARGO_TARGET_DIR/release/examples/http_load"
python3 benches/gen_orders.py "$n" > "$work/orders.jsonl"

bench_db_prefix="weir_bench_http_$$"
# shellcheck source=scripts/bench-db.sh
source scripts/bench-db.sh

# The HTTP example pointed at PostgreSQL, RAW in $work; with `file`, the same reading the orders file instead.
config() { # url kind max_wait_ms
  local url=$1 kind=$2 wait=$3 cfg="$work/weir-$RANDOM.toml"
  sed -e "s|^plugin = .*|plugin = \"$root/plugins/dist/orders.wasm\"|" \
      -e "s|^dir = \"out/raw\"|dir = \"$work/raw-$RANDOM\"|" \
      -e "s|^kind = \"sqlite\"|kind = \"postgres\"|" \
      -e "s|^path = \"\${WEIR_HTTP_DB:-out/weir.db}\"|url = \"$url\"|" \
      -e "s|^max_records = 500|max_records = 5000|" \
      -e "s|^max_wait_ms = 200|max_wait_ms = $wait|" \
      examples/http-ingest/weir.toml > "$cfg"
  if [ "$kind" = file ]; then
    python3 - "$cfg" "$work/orders.jsonl" <<'PY'
import re, sys
path, data = sys.argv[1], sys.argv[2]
text = open(path).read()
head, rest = text.split("[source]", 1)
_, tail = rest.split("[raw]", 1)
open(path, "w").write(f'{head}[source]\nkind = "file"\npath = "{data}"\n\n[raw]{tail}')
PY
  fi
  "$weir" schema apply -c "$cfg" >/dev/null
  echo "$cfg"
}

printf '| run | requests | records | seconds | requests/s | records/s | p50 ms | p99 ms | 429/503 retried |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'

url=$(fresh_db file)
cfg=$(config "$url" file 250)
start=$(date +%s.%N)
WEIR_LOG=warn "$weir" run -c "$cfg" >/dev/null
file_secs=$(echo "$(date +%s.%N) - $start" | bc)
file_rate=$(echo "$n / $file_secs" | bc -l)
printf '| weir run, file source, batch 5000 (the peer) | - | %d | %.2f | - | %.0f | - | - | - |\n' "$n" "$file_secs" "$file_rate"
drop_db file

declare -a rates=()
for shape in "8 500" "64 50" "32 500" "64 250"; do
  read -r clients per <<<"$shape"
  url=$(fresh_db "serve$clients")
  cfg=$(config "$url" http 50)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  WEIR_LOG=warn "$weir" serve -c "$cfg" --bind "127.0.0.1:$port" >/dev/null &
  server=$!
  until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; do sleep 0.1; done
  row=$("$load" "127.0.0.1:$port" "$work/orders.jsonl" "$clients" "$per")
  echo "${row/| /| weir serve, }"
  kill -TERM "$server"; wait "$server" || true
  server=
  got=$(psql -X -qAt "$url" -c "SELECT sum(records_in) FROM weir_batches")
  [ "$got" = "$n" ] || { echo "weir serve committed $got of $n records" >&2; exit 1; }
  rates+=("$clients × $per: $(awk -F'|' '{ print $7 }' <<<"$row" | tr -d ' ')")
  drop_db "serve$clients"
done

echo
for r in "${rates[@]}"; do
  rate=${r##*: }
  printf 'weir serve (%s) / weir run on the file: %.2f×\n' "${r%%: *}" "$(echo "$rate / $file_rate" | bc -l)"
done
