#!/usr/bin/env bash
# The quickstart demo on the embedded default (no AWS, no servers):
#   scripts/quickstart.sh
# Builds only what the demo runs — the Rust orders rule, and weir's embedded path (file source, local RAW,
# SQLite: `--no-default-features`) — then runs examples/quickstart/weir.toml: lines of
# examples/quickstart/orders.jsonl → RAW copies in examples/quickstart/out/raw → the orders rule →
# examples/quickstart/out/weir.db (SQLite). Prints a summary of what happened to every record.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
scripts/build-plugins.sh --quickstart
cargo build --locked -p weir --no-default-features
rm -rf examples/quickstart/out
"$CARGO_TARGET_DIR/debug/weir" run -c examples/quickstart/weir.toml
echo
echo "Look inside:  sqlite3 examples/quickstart/out/weir.db 'SELECT * FROM orders'   (or any SQLite client)"
echo "RAW copies:   find examples/quickstart/out/raw -name '*.jsonl.gz' | xargs zcat | head -3"
