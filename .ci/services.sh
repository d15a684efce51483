#!/usr/bin/env bash
# Start throwaway PostgreSQL and Redis servers for the tests (installing Debian's packages when
# missing) and print the environment variables the tests read. Used by .ci/run; also handy
# locally: `eval "$(.ci/services.sh start)"`, then `.ci/services.sh stop`.
set -euo pipefail
STATE=${FLUXGATE_CI_STATE:-/tmp/fluxgate-ci}
PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install_missing() {
  local need=()
  [ -n "$(pg_bin)" ] || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2
  fi
  # the web console's browser tests (tests/console/) drive Debian's chromium with Playwright;
  # without it they skip, so a failed install is only a warning
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium" >&2
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 || \
      echo "warning: chromium could not be installed; the console's browser tests will skip" >&2
  fi
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then (cd / && su postgres -s /bin/sh -c "$1"); else sh -c "$1"; fi
}

start() {
  install_missing
  mkdir -p "$STATE"
  local bin; bin=$(pg_bin)
  if [ ! -f "$STATE/pg/PG_VERSION" ]; then
    mkdir -p "$STATE/pg"
    [ "$(id -u)" = 0 ] && chown -R postgres "$STATE"
    as_postgres "$bin/initdb -D $STATE/pg -A trust -U postgres >/dev/null"
  fi
  # already running from an earlier `start` (same state dir): reuse it
  if ! as_postgres "$bin/pg_ctl -D $STATE/pg status >/dev/null 2>&1"; then
    as_postgres "$bin/pg_ctl -D $STATE/pg -o '-p $PG_PORT -k $STATE -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off' -l $STATE/pg.log -w start >/dev/null"
  fi
  if ! { [ -f "$STATE/redis.pid" ] && kill -0 "$(cat "$STATE/redis.pid")" 2>/dev/null; }; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
  fi
  echo "export FLUXGATE_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:$PG_PORT/postgres"
  echo "export FLUXGATE_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

stop() {
  local bin; bin=$(pg_bin)
  [ -f "$STATE/pg/postmaster.pid" ] && as_postgres "$bin/pg_ctl -D $STATE/pg -m fast stop >/dev/null" || true
  [ -f "$STATE/redis.pid" ] && kill "$(cat "$STATE/redis.pid")" 2>/dev/null || true
  rm -rf "$STATE"
}

"${1:-start}"
