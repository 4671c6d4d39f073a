#!/usr/bin/env bash
# The S3 example end to end on local servers: creates the landing bucket, the notification queue and the RAW
# bucket, uploads the quickstart orders (gzipped) and sends the S3 notification of that upload, drains the
# queue into PostgreSQL (`weir run`) and shows what was loaded with each row's lineage.
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
export WEIR_RAW_BUCKET=${WEIR_RAW_BUCKET:-weir-raw} WEIR_LANDING_BUCKET=weir-landing-$$
# The local server tells services apart by the credential scope of a request's signature (it checks no signature).
sqs() { curl -fsS "$endpoint/" -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20261206/$AWS_REGION/sqs/aws4_request, SignedHeaders=host, Signature=0" "$@"; }
curl -fsS -X PUT "$endpoint/$WEIR_RAW_BUCKET" >/dev/null || true   # exists already: fine
curl -fsS -X PUT "$endpoint/$WEIR_LANDING_BUCKET" >/dev/null
export WEIR_EVENTS_QUEUE_URL
WEIR_EVENTS_QUEUE_URL=$(sqs -d "Action=CreateQueue&QueueName=weir-landing-events-$$" |
  sed -n 's|.*<QueueUrl>\(.*\)</QueueUrl>.*|\1|p')
db=weir_s3_example
psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
export WEIR_SINK_URL="${WEIR_PG_ADMIN_URL%/*}/$db"
psql -X -q "$WEIR_SINK_URL" <<'SQL'
CREATE DOMAIN super AS jsonb;
CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;
SQL

# The upload, and the notification S3 would send for it (a local server does not send notifications).
key=incoming/2026-12-06/orders.jsonl.gz
gzip -c "$root/examples/quickstart/orders.jsonl" > "$here/.orders.jsonl.gz"
etag=$(curl -fsS -T "$here/.orders.jsonl.gz" -H "Expect:" -D - "$endpoint/$WEIR_LANDING_BUCKET/$key" -o /dev/null |
  tr -d '\r' | sed -n 's/^[Ee][Tt]ag: "\(.*\)"/\1/p')
rm -f "$here/.orders.jsonl.gz"
event=$(printf '{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"%s"},"object":{"key":"%s","eTag":"%s"}}}]}' \
  "$WEIR_LANDING_BUCKET" "$key" "$etag")
sqs --data-urlencode "Action=SendMessage" --data-urlencode "QueueUrl=$WEIR_EVENTS_QUEUE_URL" \
  --data-urlencode "MessageBody=$event" >/dev/null

sed 's/^idle_exit_secs = 30 .*/idle_exit_secs = 3/; s/^wait_secs = 20/wait_secs = 1/' "$here/weir.toml" > "$here/.weir-local.toml"
"$weir" run -c "$here/.weir-local.toml"
rm -f "$here/.weir-local.toml"
psql -X "$WEIR_SINK_URL" -c "SELECT order_id, total, country, _weir_record_id FROM orders ORDER BY 1"
