#!/usr/bin/env bash
# Fleet benchmark on a Redshift-like database (../shared/redshift-sim: serializable isolation, table-level write
# locks, COMMIT_MS per write transaction): 1, 2 and 4 `weir run` workers, each on its own file of RECORDS
# orders, per-batch commits against grouped commits (`[sink.group_commit]`, registry and loader lease in a
# plain PostgreSQL coordinator database). Prints one table; the figures in docs/PERFORMANCE.md come from it.
#
#   scripts/bench-fleet.sh [RECORDS] [COMMIT_MS] [BATCH] [INTERVAL_MS]     defaults 20000 250 1000 2000
# WEIR_BENCH_SECTIONS (default "files kinesis steady") picks the tables; WEIR_BENCH_MODES (default
# "plain per-batch grouped grouped-copy") the commit modes of the files table: `grouped-copy` is grouped commits
# with the COPY stage fill, Redshift's `COPY` from S3 played by the example `redshift_copy_front` (a front for
# PostgreSQL that reads the manifest and files from the local S3 server and inserts their rows);
# WEIR_BENCH_KINESIS_MODES (default "per-batch grouped grouped-copy") those of the Kinesis table.
# WEIR_BENCH_WORKER_CPUS (say 0.4) runs each
# worker in a cgroup of its own limited to that share of one core, as if each had a small instance to itself:
# on one machine the workers otherwise share its cores with the database, and the table reads the cores, not
# the fleet (needs a writable cgroup cpu controller, v1 or v2; the database and coordinator are not limited).
# WEIR_BENCH_WORKERS (default "1 2 4") the fleet sizes. WEIR_BENCH_LOG, a log filter for the workers (say
# "warn,weir::group=debug"), prints their merge rounds and lease moves after each run; WEIR_BENCH_KEEP_LOGS=DIR
# keeps the Kinesis workers' whole logs there.
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
n=${1:-20000} commit_ms=${2:-250} batch=${3:-1000} interval_ms=${4:-2000}
work=$(mktemp -d)
sim="$root/../shared/redshift-sim/install.sql"
[ -f "$sim" ] || { echo "bench-fleet: $sim is needed (the shared/ folder beside the checkout)" >&2; exit 1; }

eval "$(scripts/services.sh)"
scripts/build-plugins.sh >/dev/null
cargo build --release --locked -p weir --bin weir --example redshift_copy_front >&2
weir="$CARGO_TARGET_DIR/release/weir"
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test} AWS_REGION=${AWS_REGION:-us-east-1}
# Redshift's COPY from S3, played in front of PostgreSQL (mode grouped-copy), with its bucket on the local S3 server.
copy_bucket="weir-bench-copy-$$"
front_pid=
kinesis_modes=${WEIR_BENCH_KINESIS_MODES:-per-batch grouped grouped-copy}
if [[ " ${WEIR_BENCH_MODES:-grouped-copy} $kinesis_modes " == *" grouped-copy "* ]]; then
  curl -fsS -X PUT "$WEIR_AWS_ENDPOINT/$copy_bucket" >/dev/null
  "$CARGO_TARGET_DIR/release/examples/redshift_copy_front" 127.0.0.1:5432 "$WEIR_AWS_ENDPOINT" > "$work/front" &
  front_pid=$!
  for _ in $(seq 1 50); do [ -s "$work/front" ] && break; sleep 0.1; done
  front_addr=$(head -1 "$work/front")
fi
for w in 0 1 2 3; do python3 benches/gen_orders.py "$n" $((w * 1000000)) > "$work/orders-$w.jsonl"; done

# Per-worker CPU limits (WEIR_BENCH_WORKER_CPUS): one cgroup per worker.
cap=${WEIR_BENCH_WORKER_CPUS:-}
# The scheduler's period for that share (WEIR_BENCH_CPU_PERIOD_US, default 10,000 µs): a worker gets its share
# of every period, then waits for the next. With the kernel's default of 100 ms, 0.15 of a core is 15 ms of CPU
# then an 85 ms stop, and a chain of round trips (a merge is some 40 statements) waits for a new period at
# almost every step: a stop-and-go no instance has. 10 ms spreads the same share evenly.
period=${WEIR_BENCH_CPU_PERIOD_US:-10000}
cgroups=()
if [ -n "$cap" ]; then
  if [ -w /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    cg_root=/sys/fs/cgroup/cpu cg_v=1
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    cg_root=/sys/fs/cgroup cg_v=2
    echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  else
    echo "bench-fleet: WEIR_BENCH_WORKER_CPUS needs a writable cgroup cpu controller" >&2; exit 1
  fi
fi
# On the way out (an early failure included) no worker or front is left running to load the next bench.
trap 'pkill -P $$ 2>/dev/null || true; sleep 0.5; for g in "${cgroups[@]}"; do rmdir "$g" 2>/dev/null || true; done; rm -rf "$work"' EXIT
# Runs a command in the background (its pid in $!), in a cgroup of its own when workers are limited.
spawn() {
  if [ -z "$cap" ]; then
    "$@" &
    return
  fi
  local g="$cg_root/weir-bench-$$-${#cgroups[@]}"
  local quota
  quota=$(awk -v c="$cap" -v p="$period" 'BEGIN { printf "%d", c * p }')
  mkdir -p "$g"
  cgroups+=("$g")
  if [ "$cg_v" = 1 ]; then
    echo "$period" > "$g/cpu.cfs_period_us"
    echo "$quota" > "$g/cpu.cfs_quota_us"
  else
    echo "$quota $period" > "$g/cpu.max"
  fi
  (echo "$BASHPID" > "$g/cgroup.procs" && exec "$@") &
}

# WEIR_BENCH_LOG (say `warn,weir::group=debug`) logs the workers at that level and prints their merge rounds.
log=${WEIR_BENCH_LOG:-warn}
bench_db_prefix="weir_fleet_$$"
# shellcheck source=scripts/bench-db.sh
source scripts/bench-db.sh

config() { # url input mode [coordinator-url]
  local cfg="$work/weir-$RANDOM.toml" url=$1 fill=
  if [ "$3" = grouped-copy ]; then
    url=${url/@127.0.0.1:5432\//@$front_addr/}
    fill="stage_fill = { kind = \"copy\", bucket = \"$copy_bucket\", iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }"
  fi
  sed -e "s|^path = \"orders.jsonl\"|path = \"$2\"|" \
      -e "s|^dir = \"out/raw\"|dir = \"$work/raw-$RANDOM\"|" \
      -e "s|^plugin = .*|plugin = \"$root/plugins/dist/orders.wasm\"|" \
      -e "s|^kind = \"sqlite\"|kind = \"redshift\"\n$fill|" \
      -e "s|^path = \"\${WEIR_QUICKSTART_DB:-out/weir.db}\"|url = \"$url?sslmode=disable\"|" \
      -e "s|^max_records = 4|max_records = $batch|" \
      examples/quickstart/weir.toml > "$cfg"
  if [ "$3" = grouped-copy ]; then
    printf '[aws]\nendpoint_url = "%s"\n' "$WEIR_AWS_ENDPOINT" >> "$cfg"
  fi
  if [ "${3%-copy}" != grouped ]; then
    printf '[sink.group_commit]\nenabled = false\n' >> "$cfg"
  else
    cat >> "$cfg" <<TOML
[sink.group_commit]
enabled = true
interval_ms = $interval_ms
[sink.group_commit.staging]
kind = "local"
dir = "$work/staged"
[coordinator]
kind = "postgres"
url = "$4"
TOML
  fi
  echo "$cfg"
}

# Busy share of the whole machine (every core, workers and database alike) from /proc/stat: "busy idle" jiffies.
cpu_now() { awk '/^cpu / { idle = $5 + $6; busy = 0; for (i = 2; i <= NF; i++) busy += $i; print busy - idle, idle }' /proc/stat; }

# The tables first (redshift-sim covers the tables that exist when it is installed): a run on an empty file;
# then redshift-sim, unless MODE is plain.   prepare_db URL MODE COORDINATOR-URL
prepare_db() {
  : > "$work/empty.jsonl"
  WEIR_LOG=warn "$weir" run -c "$(config "$1" "$work/empty.jsonl" "$2" "$3")" >/dev/null
  if [ "$2" != plain ]; then
    psql -X -q "$1" -v commit_ms="$commit_ms" -f "$sim" >/dev/null
    psql -X -q "$1" -c "TRUNCATE redshift_sim.commits" >/dev/null
  fi
}

# One table row from a run: its database, mode and workers, the records in its ledger, its start and end
# (seconds since the epoch), the machine's busy/idle jiffies at both ends. Sets base (records/s of the first
# row of a series) when empty.   report URL DATABASE MODE WORKERS START END BUSY0 IDLE0 BUSY1 IDLE1
report() {
  local url=$1 database=$2 mode=$3 workers=$4 start=$5 end=$6 busy0=$7 idle0=$8 busy1=$9 idle1=${10}
  local records commits busy secs rate bound
  records=$(psql -X -qAt "$url" -c "SELECT coalesce(sum(records_in), 0) FROM weir_batches")
  commits=-
  [ "$database" = redshift-sim ] && commits=$(psql -X -qAt "$url" -c "SELECT count(*) FROM redshift_sim.commits")
  busy=$(awk -v b=$((busy1 - busy0)) -v i=$((idle1 - idle0)) 'BEGIN { printf "%.0f %%", 100 * b / (b + i) }')
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  rate=$(awk -v r="$records" -v s="$secs" 'BEGIN { printf "%.0f", r / s }')
  base=${base:-$rate}
  bound=$(awk -v s="$secs" -v i="$interval_ms" -v m="$mode" 'BEGIN { if (m ~ /^grouped/) printf "%.0f", s * 1000 / i + 5; else printf "-" }')
  awk -v d="$database" -v m="$mode" -v w="$workers" -v n="$records" -v s="$secs" -v r="$rate" -v b="$base" -v u="$busy" -v c="$commits" -v bd="$bound" \
    'BEGIN { printf "| %s | %s | %d | %d | %s | %d | %.2f | %s | %s | %s |\n", d, m, w, n, s, r, r / b, u, c, bd }'
}

sections=${WEIR_BENCH_SECTIONS:-files kinesis steady}
section() { [[ " $sections " == *" $1 "* ]]; }
if section files; then
printf '| database | commits | workers | records | seconds | records/s | × 1 worker | machine busy | warehouse write transactions | bound: seconds / interval + 5 |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
# "plain": per-batch commits on plain PostgreSQL (no redshift-sim), what this machine's cores allow when
# commits are cheap: the ceiling the Redshift-like runs are read against.
for mode in ${WEIR_BENCH_MODES:-plain per-batch grouped grouped-copy}; do
  base=
  for workers in 1 2 4; do
    tag="${mode%%-*}$workers"
    url=$(fresh_db "$tag")
    coord=$(fresh_db "${tag}c")
    prepare_db "$url" "$mode" "$coord"
    pids=()
    read -r busy0 idle0 <<< "$(cpu_now)"
    start=$(date +%s.%N)
    for ((w = 0; w < workers; w++)); do
      cfg=$(config "$url" "$work/orders-$w.jsonl" "$mode" "$coord")
      WEIR_LOG=$log spawn "$weir" run -c "$cfg" > "$work/out-$w" 2>&1
      pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || { echo "a worker failed:" >&2; cat "$work"/out-* >&2; exit 1; }; done
    end=$(date +%s.%N)
    read -r busy1 idle1 <<< "$(cpu_now)"
    if [ "$mode" = plain ]; then
      report "$url" postgres per-batch "$workers" "$start" "$end" "$busy0" "$idle0" "$busy1" "$idle1"
    else
      report "$url" redshift-sim "$mode" "$workers" "$start" "$end" "$busy0" "$idle0" "$busy1" "$idle1"
    fi
    [ -n "${WEIR_BENCH_LOG:-}" ] && { grep -h "merge round" "$work"/out-* | sed 's/\x1b\[[0-9;]*m//g' >&2 || true; }
    drop_db "$tag"; drop_db "${tag}c"
  done
done
fi

# A 4-shard Kinesis stream (kinesalite) holding 4 × RECORDS orders, shared by 1, 2 and 4 workers through leases:
# per-batch against grouped, leases in a PostgreSQL coordinator in both (with leases in the warehouse, renewals
# and commits update the same rows, and on Redshift's serializable semantics four workers' commits failed after
# 20 retries of 40001), the registry and loader lease there too when grouped. Timed from the first worker's start until the ledger holds every record.
kinesis_config() { # url stream worker mode coordinator-url
  local cfg="$work/kinesis-$3-$RANDOM.toml" url=$1 fill=
  if [ "$4" = grouped-copy ]; then
    url=${url/@127.0.0.1:5432\//@$front_addr/}
    fill="stage_fill = { kind = \"copy\", bucket = \"$copy_bucket\", iam_role = \"arn:aws:iam::123456789012:role/weir-copy\" }"
  fi
  cat > "$cfg" <<TOML
[source]
kind = "kinesis"
stream = "$2"
endpoint_url = "$WEIR_KINESIS_ENDPOINT"
initial_position = "trim_horizon"
worker_id = "$3"
lease_secs = 6
renew_secs = 1
poll_ms = 200
[raw]
kind = "local"
dir = "$work/kraw-$3-$RANDOM"
[rule]
plugin = "$root/plugins/dist/orders.wasm"
TOML
  sed -n '/^\[sink\]/,/^\[aws\]/p' examples/kinesis-to-redshift/weir.toml | sed '$d' \
    | sed -e "s|^kind = .*|kind = \"redshift\"\n$fill|" -e "s|^url = .*|url = \"$url?sslmode=disable\"|" \
          -e "s|^max_records = .*|max_records = $batch|" -e "s|^max_wait_ms = .*|max_wait_ms = 200|" >> "$cfg"
  # The stream on the Kinesis server (the source's own endpoint), S3 for the COPY fill on the AWS server.
  printf '[aws]\nendpoint_url = "%s"\n' "$WEIR_AWS_ENDPOINT" >> "$cfg"
  if [ "${4%-copy}" = grouped ]; then
    printf '[sink.group_commit]\nenabled = true\ninterval_ms = %s\n[sink.group_commit.staging]\nkind = "local"\ndir = "%s"\n' \
      "$interval_ms" "$work/kstaged" >> "$cfg"
  else
    printf '[sink.group_commit]\nenabled = false\n' >> "$cfg"
  fi
  printf '[coordinator]\nkind = "postgres"\nurl = "%s"\n' "$5" >> "$cfg"
  echo "$cfg"
}
create_stream() { # name shards (kinesalite accepts any signature)
  curl -fsS "$WEIR_KINESIS_ENDPOINT/" -H 'X-Amz-Target: Kinesis_20131202.CreateStream' \
    -H 'Content-Type: application/x-amz-json-1.1' -H 'X-Amz-Date: 20260101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0' \
    -d "{\"StreamName\":\"$1\",\"ShardCount\":$2}" >/dev/null
  sleep 1
}
if section kinesis; then
cat "$work"/orders-[0-3].jsonl > "$work/orders-all.jsonl"
total=$((4 * n))
echo
printf '| database (4-shard Kinesis stream) | commits | workers | records | seconds | records/s | × 1 worker | machine busy | warehouse write transactions | bound: seconds / interval + 5 |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for mode in $kinesis_modes; do
  base=
  for workers in ${WEIR_BENCH_WORKERS:-1 2 4}; do
    tag="k${mode//-/}$workers"
    stream="weir-bench-$$-$tag"
    create_stream "$stream" 4
    url=$(fresh_db "$tag")
    coord=$(fresh_db "${tag}c")
    WEIR_LOG=warn "$weir" produce -c "$(kinesis_config "$url" "$stream" w0 "$mode" "$coord")" "$work/orders-all.jsonl" >/dev/null
    prepare_db "$url" "$mode" "$coord"
    pids=()
    read -r busy0 idle0 <<< "$(cpu_now)"
    start=$(date +%s.%N)
    for ((w = 0; w < workers; w++)); do
      cfg=$(kinesis_config "$url" "$stream" "w$w" "$mode" "$coord")
      WEIR_LOG=$log spawn "$weir" run -c "$cfg" > "$work/kout-$w" 2>&1
      pids+=($!)
    done
    records=0
    while [ "$records" -lt "$total" ]; do
      sleep 0.2
      records=$(psql -X -qAt "$url" -c "SELECT coalesce(sum(records_in), 0) FROM weir_batches")
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a worker exited early:" >&2; cat "$work"/kout-* >&2; exit 1; }; done
    done
    end=$(date +%s.%N)
    read -r busy1 idle1 <<< "$(cpu_now)"
    report "$url" redshift-sim "$mode" "$workers" "$start" "$end" "$busy0" "$idle0" "$busy1" "$idle1"
    # WEIR_BENCH_KEEP_LOGS=DIR keeps every worker's log of each run (DIR/<mode><workers>-kout-N).
    [ -n "${WEIR_BENCH_KEEP_LOGS:-}" ] && for f in "$work"/kout-*; do cp "$f" "$WEIR_BENCH_KEEP_LOGS/$tag-${f##*/}"; done
    [ -n "${WEIR_BENCH_LOG:-}" ] && { grep -H "merge round\|took a lease\|lease lost\|claimed" "$work"/kout-* | sed 's/\x1b\[[0-9;]*m//g' >&2 || true; }
    kill -TERM "${pids[@]}"
    for pid in "${pids[@]}"; do wait "$pid" || true; done
    drop_db "$tag"; drop_db "${tag}c"
  done
done
fi

# Receive-to-commit latency with grouped commits: one worker fed a steady 1,000 records/s on standard input for
# STEADY_SECS (default 30), batches closing after 100 ms.
if section steady; then
steady=${WEIR_BENCH_STEADY_SECS:-30}
url=$(fresh_db steady)
coord=$(fresh_db steadyc)
prepare_db "$url" grouped "$coord"
cfg=$(config "$url" - grouped "$coord")
sed -i "s|^max_wait_ms = .*|max_wait_ms = 100|" "$cfg"
python3 benches/feed.py "$work/orders-0.jsonl" 1000 "$steady" | WEIR_LOG=warn "$weir" run -c "$cfg" > "$work/steady" 2>&1
lat=$(sed -n 's/^latency, receive to commit: p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/\1 \2/p' "$work/steady")
read -r p50 p99 <<< "$lat"
echo
printf '| grouped, steady 1,000 records/s for %s s | p50 ms | p99 ms | bound: interval_ms + 2000 |\n|---|---:|---:|---:|\n| 1 worker | %s | %s | %s |\n' \
  "$steady" "${p50:--}" "${p99:--}" "$((interval_ms + 2000))"
drop_db steady; drop_db steadyc
fi

echo
limits="workers not limited"
[ -n "$cap" ] && limits="workers limited to $cap CPU each (per period of $period µs)"
echo "commit cost ${commit_ms} ms per write transaction, batch $batch, grouped interval ${interval_ms} ms, $n orders per worker; $(nproc) cores; $limits"
