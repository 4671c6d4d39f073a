#!/usr/bin/env bash
# Starts the real services the tests talk to, installing them when missing. Prints `export` lines for the
# environment the tests read, so callers can `eval "$(scripts/services.sh)"`.
#
#   PostgreSQL (stand-in for Redshift): WEIR_PG_ADMIN_URL, a superuser URL the tests use to create a fresh
#   database and an MD5-password role per test. Set it yourself to test against another server.
#   moto server (S3 and the Redshift control plane, AWS wire protocols): WEIR_AWS_ENDPOINT, on 127.0.0.1:4566.
#   Set it yourself to use another endpoint.
#   kinesalite (Kinesis with correct shard ends, for resharding): WEIR_KINESIS_ENDPOINT, on 127.0.0.1:4567.
#   mongoeco (a MongoDB wire-protocol server; no real mongod installs here): MONGODB_URI, on 127.0.0.1:27017.
#   Set MONGODB_URI yourself to test against a real MongoDB.
set -euo pipefail

log() { echo "services: $*" >&2; }

# ---- PostgreSQL -------------------------------------------------------------------------------------------
pg_url=${WEIR_PG_ADMIN_URL:-}
if [ -z "$pg_url" ]; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -n | tail -1)
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not start"; exit 1; }
  if psql -X -q "postgresql://postgres@127.0.0.1:5432/postgres" -c 'SELECT 1' >/dev/null 2>&1; then
    pg_url="postgres://postgres@127.0.0.1:5432/postgres"
  else
    # A fresh install asks for SCRAM passwords over TCP. For this test server: give the superuser a password,
    # accept MD5 passwords (Redshift-like), and trust members of weir_iam_users, the roles the IAM tests log
    # in as with the random passwords a local AWS server hands out.
    log "configuring PostgreSQL $version for the tests (test machines only)"
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! grep -q weir_iam_users "$hba"; then
      { echo "host all +weir_iam_users 127.0.0.1/32 trust"; echo "host all all 127.0.0.1/32 md5"; cat "$hba"; } > "$hba.new"
      mv "$hba.new" "$hba"
    fi
    su postgres -c "psql -X -q -c \"ALTER ROLE postgres PASSWORD 'weir-tests'\"" >&2
    su postgres -c "psql -X -q -c \"DO \\\$\\\$ BEGIN CREATE ROLE weir_iam_users NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \\\$\\\$\"" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
    pg_url="postgres://postgres:weir-tests@127.0.0.1:5432/postgres"
  fi
fi
echo "export WEIR_PG_ADMIN_URL='$pg_url'"

# ---- moto server ------------------------------------------------------------------------------------------
aws_url=${WEIR_AWS_ENDPOINT:-}
if [ -z "$aws_url" ]; then
  aws_url="http://127.0.0.1:4566"
  up() { (exec 3<>/dev/tcp/127.0.0.1/4566) 2>/dev/null; }
  if ! up; then
    venv=${WEIR_MOTO_VENV:-/var/tmp/weir-moto}
    if [ ! -x "$venv/bin/moto_server" ]; then
      log "installing moto server (PyPI) into $venv"
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install -q 'moto[server]==5.2.5' >&2
    fi
    log "starting moto server on 127.0.0.1:4566"
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 4566 > "${TMPDIR:-/tmp}/weir-moto.log" 2>&1 &
    for _ in $(seq 1 30); do up && break; sleep 1; done
    up || { log "moto server did not start"; exit 1; }
  fi
fi
echo "export WEIR_AWS_ENDPOINT='$aws_url'"

# ---- kinesalite -------------------------------------------------------------------------------------------
kinesis_url=${WEIR_KINESIS_ENDPOINT:-}
if [ -z "$kinesis_url" ]; then
  kinesis_url="http://127.0.0.1:4567"
  kup() { (exec 3<>/dev/tcp/127.0.0.1/4567) 2>/dev/null; }
  if ! kup; then
    dir=${WEIR_KINESALITE_DIR:-/var/tmp/weir-kinesalite}
    if [ ! -x "$dir/node_modules/.bin/kinesalite" ]; then
      if ! command -v npm >/dev/null 2>&1; then
        log "installing Node.js (Debian package)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 && apt-get install -y -qq nodejs npm >&2
      fi
      log "installing kinesalite (npm) into $dir"
      mkdir -p "$dir" && npm install -s --prefix "$dir" kinesalite@3.3.3 >&2
    fi
    log "starting kinesalite on 127.0.0.1:4567"
    nohup "$dir/node_modules/.bin/kinesalite" --port 4567 --createStreamMs 50 --updateStreamMs 50 \
      --deleteStreamMs 50 --shardLimit 100000 > "${TMPDIR:-/tmp}/weir-kinesalite.log" 2>&1 &
    for _ in $(seq 1 30); do kup && break; sleep 1; done
    kup || { log "kinesalite did not start"; exit 1; }
  fi
fi
echo "export WEIR_KINESIS_ENDPOINT='$kinesis_url'"

# ---- MongoDB (mongoeco) -----------------------------------------------------------------------------------
mongo_uri=${MONGODB_URI:-}
if [ -z "$mongo_uri" ]; then
  mongo_uri="mongodb://127.0.0.1:27017/?directConnection=true"
  mup() { (exec 3<>/dev/tcp/127.0.0.1/27017) 2>/dev/null; }
  if ! mup; then
    venv=${WEIR_MONGO_VENV:-/var/tmp/weir-mongo}
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mongoeco' 2>/dev/null; then
      # A Python 3.13 that runs (a pyenv shim exists for every installed version but fails unless selected).
      py=
      for cand in "$(command -v python3.13 || true)" \
                  $( (command -v pyenv >/dev/null 2>&1 && ls -d "$(pyenv root)"/versions/3.13*/bin/python3) 2>/dev/null); do
        if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then
          py=$cand
          break
        fi
      done
      [ -n "$py" ] || { log "mongoeco needs Python 3.13 (pyenv install 3.13), or set MONGODB_URI"; exit 1; }
      log "installing mongoeco (PyPI) into $venv"
      "$py" -m venv "$venv" >&2
      "$venv/bin/pip" install -q 'mongoeco[wire]==4.11.0' >&2
    fi
    log "starting mongoeco on 127.0.0.1:27017"
    nohup "$venv/bin/python" "$(dirname "$0")/mongo-server.py" 27017 > "${TMPDIR:-/tmp}/weir-mongo.log" 2>&1 &
    for _ in $(seq 1 30); do mup && break; sleep 1; done
    mup || { log "mongoeco did not start"; exit 1; }
  fi
fi
echo "export MONGODB_URI='$mongo_uri'"
