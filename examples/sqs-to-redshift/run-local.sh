#!/usr/bin/env bash
# The SQS example end to end on local servers: creates the queue and the bucket, fills the queue with the
# quickstart orders (`weir produce`), drains it into PostgreSQL (`weir run`) and shows what was loaded.
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
endpoint=${WEIR_AWS_ENDPOINT:-http://127.0.0.1:4566}
export WEIR_RAW_BUCKET=${WEIR_RAW_BUCKET:-weir-raw}
queue=weir-orders-$$
# The local server tells services apart by the credential scope of a request's signature (it checks no signature).
sqs() { curl -fsS "$endpoint/" -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20261206/$AWS_REGION/sqs/aws4_request, SignedHeaders=host, Signature=0" "$@"; }
curl -fsS -X PUT "$endpoint/$WEIR_RAW_BUCKET" >/dev/null || true   # exists already: fine
export WEIR_QUEUE_URL
WEIR_QUEUE_URL=$(sqs -d "Action=CreateQueue&QueueName=$queue" |
  sed -n 's|.*<QueueUrl>\(.*\)</QueueUrl>.*|\1|p')
db=weir_sqs_example
psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export WEIR_SINK_URL="${WEIR_PG_ADMIN_URL%/*}/$db"
psql -X -q "$WEIR_SINK_URL" <<'SQL'
CREATE DOMAIN super AS jsonb;
CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;
SQL

"$weir" produce -c "$here/weir.toml" "$root/examples/quickstart/orders.jsonl"
sed 's/^idle_exit_secs = 30 .*/idle_exit_secs = 3/; s/^wait_secs = 20 .*/wait_secs = 1/' "$here/weir.toml" > "$here/.weir-local.toml"
"$weir" run -c "$here/.weir-local.toml"
rm -f "$here/.weir-local.toml"
psql -X "$WEIR_SINK_URL" -c "SELECT order_id, total, country, _weir_record_id FROM orders ORDER BY 1"
