#!/usr/bin/env bash
# Stop the PostgreSQL server started by scripts/postgres-up.sh (its data stays in PSALM_PG_DIR).
set -euo pipefail
ROOT="${PSALM_PG_DIR:-/var/tmp/psalm-postgres}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -n "$BIN" && -f "$ROOT/data/PG_VERSION" ]] || exit 0
if ((EUID == 0)); then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$ROOT/data" -m fast stop || true
else
    "$BIN/pg_ctl" -D "$ROOT/data" -m fast stop || true
fi
