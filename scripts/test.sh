#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one:
#   scripts/test.sh
# Installs and starts what is missing (the wasm32-wasip2 target, PostgreSQL, moto, kinesalite, mongoeco, the
# plugin toolchains, Chromium), builds the plugins once, then runs every test:
# the guest SDKs and example rules natively, and the host's unit, black-box and smoke-benchmark tests.
#   scripts/test.sh --long   the same with the long reliability variants: 100 random kills per source kind
#                            (WEIR_CRASH_ITERATIONS) and 20,000 cases per property test (PROPTEST_CASES),
#                            and the JavaScript rule also built ahead of time (WEIR_JS_AOT: weval, in the
#                            conformance suite)
# Builds go to $CARGO_TARGET_DIR, by default /var/tmp/weir-target, outside the checkout, so repeated runs on
# one machine (and CI's fresh clones) reuse them.
set -euo pipefail
long=
case "${1:-}" in
  --long)
    long=1
    export WEIR_CRASH_ITERATIONS=${WEIR_CRASH_ITERATIONS:-100} PROPTEST_CASES=${PROPTEST_CASES:-20000}
    export WEIR_JS_AOT=${WEIR_JS_AOT:-1} ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--long]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/weir-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Compiled plugins are cached per test run's target dir, never in the user's home.
export WEIR_CACHE_DIR=${WEIR_CACHE_DIR:-$CARGO_TARGET_DIR/weir-plugin-cache}
# This script starts every service: a test that finds one missing fails instead of skipping.
export WEIR_REQUIRE_SERVICES=1

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

started=$SECONDS
# Real services the tests talk to (PostgreSQL for Redshift, moto for S3 and the Redshift control plane),
# installed and started when missing.
services=$(scripts/services.sh)   # fails the run when a service cannot start
eval "$services"
scripts/build-plugins.sh
# cfn-lint (PyPI, pinned) checks the CloudFormation template of the deployment kit.
export WEIR_CFN_VENV=${WEIR_CFN_VENV:-/var/tmp/weir-cfn}
if [ ! -x "$WEIR_CFN_VENV/bin/cfn-lint" ]; then
  echo "==> installing cfn-lint (PyPI) into $WEIR_CFN_VENV"
  python3 -m venv "$WEIR_CFN_VENV" && "$WEIR_CFN_VENV/bin/pip" install -q 'cfn-lint==1.58.0'
fi
# PyArrow (PyPI, pinned): the independent reader of Parquet RAW in tests/parquet.rs.
export WEIR_PYARROW_VENV=${WEIR_PYARROW_VENV:-/var/tmp/weir-pyarrow}
if ! "$WEIR_PYARROW_VENV/bin/python" -c 'import pyarrow' 2>/dev/null; then
  echo "==> installing pyarrow (PyPI) into $WEIR_PYARROW_VENV"
  python3 -m venv "$WEIR_PYARROW_VENV" && "$WEIR_PYARROW_VENV/bin/pip" install -q 'pyarrow==22.0.0'
fi
# binutils (objcopy, readelf): scripts/dist.sh and its test in tests/deploy.rs.
if ! command -v objcopy >/dev/null 2>&1 || ! command -v readelf >/dev/null 2>&1; then
  echo "==> installing binutils (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq binutils
fi
# Headless Chromium renders the reconcile HTML report in tests/reconcile.rs.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "==> installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium
fi

# Every test binary runs even when an earlier one fails (--no-fail-fast); the run fails at the end if any did.
failed=()
echo "==> guest SDK and example rules (native unit tests)"
# (a target dir of its own: the same crates built by two workspaces must not overwrite each other)
(cd plugins && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/plugins-native" cargo test --locked --no-fail-fast) \
  || failed+=("guest SDK and example rules")

echo "==> Python helper: row()'s fast path against its general path (native CPython)"
python3 plugins/python/tests/test_rows.py || failed+=("Python helper rows")

echo "==> grouped-commit protocol model (spin, exhaustive for small sizes)"
scripts/model-check.sh ${long:+--long} || failed+=("model check")

echo "==> format (cargo fmt --check)"
cargo fmt --all --check || failed+=("cargo fmt --check (run cargo fmt --all)")

echo "==> host: unit tests, black-box tests, benchmark smoke run"
cargo test --workspace --locked --no-fail-fast || failed+=("host")

echo "==> lints (cargo clippy --all-targets -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings || failed+=("clippy")

echo "==> minimal build: file → local RAW → SQLite (--no-default-features), compiled and lint-clean"
# Checked, not linked, so it reuses the lint pass's dependencies and never replaces the full binary the
# tests run; `cargo build --release --no-default-features` builds it for real (README, "Cargo features").
cargo clippy -p weir --no-default-features --lib --bins --locked -- -D warnings || failed+=("minimal build")

if [ ${#failed[@]} -gt 0 ]; then
  echo "==> FAILED: ${failed[*]} (after $((SECONDS - started)) s; the failing tests are listed above)" >&2
  exit 1
fi
echo "==> all tests passed in $((SECONDS - started)) s"
