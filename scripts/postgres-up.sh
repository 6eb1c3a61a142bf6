#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for Optuna's RDB sweep storage (tests, or a
# laptop trying the cluster setup). Idempotent. Prints the storage URL:
#   postgresql://postgres@127.0.0.1:${PSALM_PG_PORT:-55432}/optuna
# Needs Debian's `postgresql` package. Run as root (the server itself runs as user postgres) or
# as any non-root user (it runs as that user). Stop it with scripts/postgres-down.sh.
set -euo pipefail

PORT="${PSALM_PG_PORT:-55432}"
ROOT="${PSALM_PG_DIR:-/var/tmp/psalm-postgres}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [[ -z "$BIN" ]]; then
    echo "postgres-up: PostgreSQL is not installed (apt-get install -y postgresql)" >&2
    exit 1
fi
as_owner() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$ROOT"
if ((EUID == 0)); then chown postgres: "$ROOT"; fi
if [[ ! -f "$ROOT/data/PG_VERSION" ]]; then
    as_owner "$BIN/initdb" -D "$ROOT/data" -A trust -U postgres >"$ROOT/initdb.log"
fi
if ! as_owner "$BIN/pg_ctl" -D "$ROOT/data" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" -w \
        -o "-p $PORT -k $ROOT -c listen_addresses=127.0.0.1" start >/dev/null
fi
if ! as_owner "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='optuna'" | grep -q 1; then
    as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres optuna
fi
echo "postgresql://postgres@127.0.0.1:${PORT}/optuna"
