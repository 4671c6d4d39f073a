#!/usr/bin/env bash
# The Kinesis example end to end on local servers: creates a 2-shard stream and a bucket, puts the quickstart
# orders (`weir produce`, KPL-aggregated by 3), reads them into PostgreSQL (`weir run`) and shows what was loaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
eval "$("$root/scripts/services.sh")"
"$root/scripts/build-plugins.sh" >/dev/null
cargo build --quiet --locked -p weir --bin weir --manifest-path "$root/Cargo.toml"
weir="$CARGO_TARGET_DIR/debug/weir"

export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1}
export WEIR_S3_ENDPOINT=$WEIR_AWS_ENDPOINT
export WEIR_RAW_BUCKET=${WEIR_RAW_BUCKET:-weir-raw}
export WEIR_STREAM=weir-orders-$$
curl -fsS -X PUT "$WEIR_S3_ENDPOINT/$WEIR_RAW_BUCKET" >/dev/null || true   # exists already: fine
# kinesalite wants a (any) signed request.
curl -fsS "$WEIR_KINESIS_ENDPOINT/" -H 'X-Amz-Target: Kinesis_20131202.CreateStream' \
  -H 'Content-Type: application/x-amz-json-1.1' -H 'X-Amz-Date: 20260101T000000Z' \
  -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0' \
  -d "{\"StreamName\":\"$WEIR_STREAM\",\"ShardCount\":2}"
sleep 1
db=weir_kinesis_example
psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export WEIR_SINK_URL="${WEIR_PG_ADMIN_URL%/*}/$db"
psql -X -q "$WEIR_SINK_URL" <<'SQL'
CREATE DOMAIN super AS jsonb;
CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;
SQL

"$weir" produce -c "$here/weir.toml" "$root/examples/quickstart/orders.jsonl" --aggregate 3
sed 's/^idle_exit_secs = 30 .*/idle_exit_secs = 3/; s/^renew_secs = 10/renew_secs = 1/' "$here/weir.toml" > "$here/.weir-local.toml"
"$weir" run -c "$here/.weir-local.toml"
rm -f "$here/.weir-local.toml"
psql -X "$WEIR_SINK_URL" -c "SELECT order_id, total, country, _weir_record_id FROM orders ORDER BY 1"
