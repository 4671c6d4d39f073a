# Sourced by the benchmark scripts: fresh PostgreSQL databases with the SUPER stand-in.
# Needs WEIR_PG_ADMIN_URL (scripts/services.sh) and bench_db_prefix (a name unique to the run).

# A fresh database `${bench_db_prefix}_$1` with the SUPER stand-in; prints its URL.
fresh_db() {
  local name="${bench_db_prefix}_$1"
  psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" >/dev/null
  local url="${WEIR_PG_ADMIN_URL%/*}/$name"
  psql -X -q "$url" >/dev/null <<'SQL'
CREATE DOMAIN super AS jsonb;
CREATE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::super $$;
CREATE FUNCTION json_serialize(super) RETURNS varchar LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT $1::jsonb::text::varchar $$;
SQL
  echo "$url"
}

drop_db() { psql -X -q "$WEIR_PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS ${bench_db_prefix}_$1" >/dev/null; }
