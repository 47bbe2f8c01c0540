#!/usr/bin/env bash
# Real Ethereum node for the earnings tests: anvil 1.7.1 (Foundry) from npm, cached outside the
# clone so a clean CI checkout reuses it. Started on loopback with Arbitrum One's chain id 42161,
# stopped by PID.
#
#   scripts/anvil-test-node.sh install   # npm install into $CACHE (44 MB, once)
#   scripts/anvil-test-node.sh start     # one shared node on a free loopback port, by PID
#   scripts/anvil-test-node.sh env       # prints: export COMINE_TEST_ANVIL=…  COMINE_TEST_ANVIL_RPC=…
#   scripts/anvil-test-node.sh stop      # kills that PID
#   scripts/anvil-test-node.sh run CMD…  # install + start, run CMD with the env exported, stop
#
# Tests that rewind the chain (evm_snapshot/evm_revert) start their own anvil from
# $COMINE_TEST_ANVIL on a free port and stop it by PID; the rest share the node above.
set -euo pipefail

VERSION="1.7.1"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/comine/anvil-$VERSION"
BIN="$CACHE/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
RUN="$CACHE/run"

die() { echo "anvil-test-node: $*" >&2; exit 1; }

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

install() {
  if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "anvil $VERSION already installed in $CACHE" >&2
    return 0
  fi
  [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || die "only linux x86_64 is packaged (@foundry-rs/anvil-linux-amd64)"
  command -v npm >/dev/null || die "npm not found: install Node.js 20 + npm (scripts/setup.sh --test)"
  mkdir -p "$CACHE"
  npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$CACHE" \
    "@foundry-rs/anvil-linux-amd64@$VERSION" || die "npm install of @foundry-rs/anvil-linux-amd64@$VERSION failed"
  chmod +x "$BIN" 2>/dev/null || true
  [[ -x "$BIN" ]] || die "npm install finished but $BIN is missing"
  echo "installed anvil $VERSION in $CACHE" >&2
}

running_pid() {
  [[ -f "$RUN/pid" ]] || return 1
  local pid; pid="$(cat "$RUN/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  [[ -x "$BIN" ]] || die "anvil not installed: run '$0 install' first"
  if pid="$(running_pid)"; then
    echo "anvil already running (pid $pid, rpc $(cat "$RUN/rpc"))" >&2
    return 0
  fi
  rm -rf "$RUN"; mkdir -p "$RUN"
  local port; port="$(free_port)"
  nohup "$BIN" --host 127.0.0.1 --port "$port" --chain-id 42161 --silent >"$RUN/anvil.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$RUN/pid"
  local url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if curl -fsS -m 2 -H 'content-type: application/json' \
        -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$url" >/dev/null 2>&1; then
      echo "$url" > "$RUN/rpc"
      echo "anvil $VERSION up: pid $pid, rpc $url" >&2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$RUN/anvil.log" >&2; die "anvil exited during start"; }
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  die "anvil did not answer on $url within 10 s"
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "anvil (pid $pid) stopped" >&2
  fi
  rm -rf "$RUN"
}

env_cmd() {
  running_pid >/dev/null && [[ -f "$RUN/rpc" ]] || die "anvil not running: run '$0 start' first"
  echo "export COMINE_TEST_ANVIL=$BIN"
  echo "export COMINE_TEST_ANVIL_RPC=$(cat "$RUN/rpc")"
}

run_cmd() {
  [[ $# -gt 0 ]] || die "usage: $0 run COMMAND [ARGS…]"
  # In CI a missing anvil fails the run; locally the earnings tests then skip, loudly.
  if ! (install); then
    [[ -n "${CI:-}" ]] && die "cannot install anvil and CI is set: the earnings tests may not be skipped"
    echo "anvil-test-node: anvil unavailable; running without it (the earnings chain tests will skip)" >&2
    exec "$@"
  fi
  start
  trap stop EXIT
  eval "$(env_cmd)"
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_cmd ;;
  run) shift; run_cmd "$@" ;;
  *) die "usage: $0 install|start|stop|env|run CMD" ;;
esac
