#!/usr/bin/env bash
# Stop the server pg-start.sh started in $PG_DIR (fast shutdown, bounded), and remove $PG_DIR
# unless PG_KEEP=1.
set -uo pipefail
DIR=${PG_DIR:?set PG_DIR}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -n "$BIN" ] && [ -s "$DIR/data/postmaster.pid" ]; then
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1
  else
    "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1
  fi
  if [ -s "$DIR/data/postmaster.pid" ]; then
    kill -9 "$(head -n 1 "$DIR/data/postmaster.pid")" 2>/dev/null
  fi
fi
[ "${PG_KEEP:-0}" = 1 ] || rm -rf "$DIR"
