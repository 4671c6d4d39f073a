#!/usr/bin/env bash
# Starts the real services the tests talk to, installing them when missing. Prints `export` lines for the
# environment the tests read, so callers can `eval "$(scripts/services.sh)"`.
#
#   PostgreSQL (stand-in for Redshift): WEIR_PG_ADMIN_URL, a superuser URL the tests use to create a fresh
#   database and an MD5-password role per test. Set it yourself to test against another server.
set -euo pipefail

log() { echo "services: $*" >&2; }

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
    # A fresh install asks for a password over TCP: give the superuser one, through the local socket.
    log "setting a password for the postgres superuser (test machines only)"
    su postgres -c "psql -X -q -c \"ALTER ROLE postgres PASSWORD 'weir-tests'\"" >&2
    pg_url="postgres://postgres:weir-tests@127.0.0.1:5432/postgres"
  fi
fi
echo "export WEIR_PG_ADMIN_URL='$pg_url'"
