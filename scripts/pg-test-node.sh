#!/usr/bin/env bash
# Real PostgreSQL for the Curio HarmonyDB tests ([post] curio_db): Debian's `postgresql` package,
# a throw-away cluster in a temp dir, listening on loopback only, started and stopped by PID.
#
#   scripts/pg-test-node.sh start     # initdb in a temp dir, start postgres on 127.0.0.1:RANDOM
#   scripts/pg-test-node.sh env       # prints: export COMINE_TEST_PG="host=127.0.0.1 port=… user=comine dbname=postgres"
#   scripts/pg-test-node.sh stop      # stops that PID, removes the temp dir
#   scripts/pg-test-node.sh run CMD…  # start, run CMD with the env exported, stop; exits with CMD's status
#
# postgres refuses to run as root: as root the cluster belongs to the `postgres` user (created by
# the Debian package) and is started with runuser. The tests create the tables they need.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.tools/pgtest"     # pid, port, data dir of the running server

die() { echo "pg-test-node: $*" >&2; exit 1; }

bindir() {
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/postgres" ]]; then
    pg_config --bindir; return
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/postgres" && -x "$d/initdb" ]] && { echo "$d"; return; }
  done
  command -v postgres >/dev/null 2>&1 && { dirname "$(readlink -f "$(command -v postgres)")"; return; }
  return 1
}

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 40000 ))
    # A refused connection means nobody listens there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running_pid() {
  [[ -f "$RUN/pid" ]] || return 1
  local pid; pid="$(cat "$RUN/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  if pid="$(running_pid)"; then
    echo "postgres already running (pid $pid, port $(cat "$RUN/port"))" >&2
    return 0
  fi
  local bin; bin="$(bindir)" || die "PostgreSQL not found: install Debian's postgresql package (scripts/setup.sh --test)"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to own the cluster (postgres refuses root)"
    command -v runuser >/dev/null 2>&1 || die "running as root without runuser (util-linux) to drop to the postgres user"
  fi
  rm -rf "$RUN"; mkdir -p "$RUN"
  local dir; dir="$(mktemp -d "${TMPDIR:-/tmp}/comine-pgtest.XXXXXX")"
  echo "$dir" > "$RUN/dir"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
  chmod 700 "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U comine --auth=trust --no-sync -E UTF8 >"$RUN/initdb.log" 2>&1 \
    || { cat "$RUN/initdb.log" >&2; die "initdb failed"; }
  local port; port="$(free_port)"
  # Loopback TCP only, socket in the cluster dir, no durability (a test database).
  as_owner "$bin/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" -k "$dir" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off >"$RUN/postgres.log" 2>&1 &
  local pid=$!
  # With runuser the PID above is runuser's; the postmaster writes its own.
  echo "$port" > "$RUN/port"
  for _ in $(seq 1 120); do
    if [[ -f "$dir/data/postmaster.pid" ]] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; then
      head -1 "$dir/data/postmaster.pid" > "$RUN/pid"
      echo "postgres up: pid $(cat "$RUN/pid"), 127.0.0.1:$port, data $dir/data" >&2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$RUN/postgres.log" >&2; die "postgres exited during start"; }
    sleep 0.25
  done
  cat "$RUN/postgres.log" >&2
  kill "$pid" 2>/dev/null || true
  die "postgres did not accept connections on 127.0.0.1:$port within 30 s"
}

stop() {
  if pid="$(running_pid)"; then
    # SIGINT: fast shutdown (disconnect clients, no checkpoint wait).
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "postgres (pid $pid) stopped" >&2
  fi
  if [[ -f "$RUN/dir" ]]; then
    local dir; dir="$(cat "$RUN/dir")"
    [[ "$dir" == */comine-pgtest.* ]] && rm -rf "$dir"
  fi
  rm -rf "$RUN"
}

env_cmd() {
  running_pid >/dev/null && [[ -f "$RUN/port" ]] || die "postgres not running: run '$0 start' first"
  echo "export COMINE_TEST_PG=\"host=127.0.0.1 port=$(cat "$RUN/port") user=comine dbname=postgres\""
}

run_cmd() {
  [[ $# -gt 0 ]] || die "usage: $0 run COMMAND [ARGS…]"
  start
  trap stop EXIT
  eval "$(env_cmd)"
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) env_cmd ;;
  run) shift; run_cmd "$@" ;;
  *) die "usage: $0 start|stop|env|run CMD" ;;
esac
