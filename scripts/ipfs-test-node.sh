#!/usr/bin/env bash
# Real IPFS node for the store tests: js-ipfs 0.66.1 from npm (speaks Kubo's RPC for single files,
# same CIDs). No Kubo binary can be downloaded on the build machines, npm can be reached.
#
#   scripts/ipfs-test-node.sh install   # npm install under .tools/jsipfs (about 3 min, once)
#   scripts/ipfs-test-node.sh start     # init an offline repo in a temp dir, start the daemon by PID
#   scripts/ipfs-test-node.sh env       # prints: export COMINE_TEST_IPFS_API=http://127.0.0.1:PORT
#   scripts/ipfs-test-node.sh stop      # kills that PID, removes the temp repo
#   scripts/ipfs-test-node.sh cli ARGS  # runs jsipfs against the running node's repo (benchmarks)
#   scripts/ipfs-test-node.sh run CMD…  # install + start, run CMD with the env exported, stop; exits with CMD's status
#
# Typical test run:
#   scripts/ipfs-test-node.sh install && scripts/ipfs-test-node.sh start
#   eval "$(scripts/ipfs-test-node.sh env)"; cargo test; scripts/ipfs-test-node.sh stop
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools/jsipfs"
RUN="$TOOLS/run"            # pid, api url, repo path of the running node
JSIPFS="$TOOLS/node_modules/.bin/jsipfs"
VERSION="0.66.1"

die() { echo "ipfs-test-node: $*" >&2; exit 1; }

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

install() {
  if [[ -x "$JSIPFS" ]] && grep -q "\"version\": \"$VERSION\"" "$TOOLS/node_modules/ipfs/package.json" 2>/dev/null; then
    echo "js-ipfs $VERSION already installed in $TOOLS" >&2
    return 0
  fi
  command -v npm >/dev/null || die "npm not found: install Node.js 20 + npm"
  mkdir -p "$TOOLS"
  # mortice 3.0.6: later 3.x releases break js-ipfs 0.66 on Node 20 (found by trial).
  cat > "$TOOLS/package.json" <<JSON
{
  "name": "comine-jsipfs-test-node",
  "private": true,
  "dependencies": { "ipfs": "$VERSION" },
  "overrides": { "mortice": "3.0.6" }
}
JSON
  (cd "$TOOLS" && npm install --no-audit --no-fund --loglevel=error) || die "npm install of ipfs@$VERSION failed"
  [[ -x "$JSIPFS" ]] || die "npm install finished but $JSIPFS is missing"
  echo "installed js-ipfs $VERSION in $TOOLS" >&2
}

running_pid() {
  [[ -f "$RUN/pid" ]] || return 1
  local pid; pid="$(cat "$RUN/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  [[ -x "$JSIPFS" ]] || die "js-ipfs not installed: run '$0 install' first"
  if pid="$(running_pid)"; then
    echo "js-ipfs already running (pid $pid, api $(cat "$RUN/api"))" >&2
    return 0
  fi
  rm -rf "$RUN"; mkdir -p "$RUN"
  local repo; repo="$(mktemp -d "${TMPDIR:-/tmp}/comine-jsipfs.XXXXXX")"
  echo "$repo" > "$RUN/repo"
  export IPFS_PATH="$repo"
  "$JSIPFS" init --empty-repo >"$RUN/init.log" 2>&1 || { cat "$RUN/init.log" >&2; die "jsipfs init failed"; }
  local api_port gw_port
  api_port="$(free_port)"; gw_port="$(free_port)"
  # Offline node: no bootstrap peers, no discovery, no routing, loopback-only API/gateway, no swarm.
  node -e '
    const fs = require("fs"); const p = process.argv[1] + "/config";
    const c = JSON.parse(fs.readFileSync(p, "utf8"));
    c.Bootstrap = [];
    c.Addresses = c.Addresses || {};
    c.Addresses.API = "/ip4/127.0.0.1/tcp/" + process.argv[2];
    c.Addresses.Gateway = "/ip4/127.0.0.1/tcp/" + process.argv[3];
    c.Addresses.RPC = "/ip4/127.0.0.1/tcp/0";
    c.Addresses.Swarm = [];
    c.Addresses.Delegates = [];
    c.Discovery = c.Discovery || {};
    c.Discovery.MDNS = { Enabled: false };
    c.Discovery.webRTCStar = { Enabled: false };
    c.Routing = { Type: "none" };
    fs.writeFileSync(p, JSON.stringify(c, null, 2));
  ' "$repo" "$api_port" "$gw_port" || die "could not write the js-ipfs config"
  nohup "$JSIPFS" daemon --offline --enable-preload=false >"$RUN/daemon.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$RUN/pid"
  local url="http://127.0.0.1:$api_port"
  for _ in $(seq 1 120); do
    if curl -fsS -m 2 -X POST "$url/api/v0/version" >/dev/null 2>&1; then
      echo "$url" > "$RUN/api"
      echo "js-ipfs $VERSION up: pid $pid, api $url, repo $repo" >&2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$RUN/daemon.log" >&2; die "jsipfs daemon exited during start"; }
    sleep 0.5
  done
  cat "$RUN/daemon.log" >&2
  kill "$pid" 2>/dev/null || true
  die "jsipfs daemon did not answer on $url within 60 s"
}

stop() {
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    echo "js-ipfs (pid $pid) stopped" >&2
  fi
  if [[ -f "$RUN/repo" ]]; then
    local repo; repo="$(cat "$RUN/repo")"
    [[ "$repo" == */comine-jsipfs.* ]] && rm -rf "$repo"
  fi
  rm -rf "$RUN"
}

env_cmd() {
  running_pid >/dev/null && [[ -f "$RUN/api" ]] || die "js-ipfs not running: run '$0 start' first"
  echo "export COMINE_TEST_IPFS_API=$(cat "$RUN/api")"
  echo "export COMINE_TEST_IPFS_REPO=$(cat "$RUN/repo")"
  echo "export COMINE_TEST_JSIPFS=$JSIPFS"
}

cli() {
  [[ -f "$RUN/api" ]] || die "js-ipfs not running: run '$0 start' first"
  # The multiaddr in $IPFS_PATH/api makes this js-ipfs CLI fail ("Invalid URL"); a URL works.
  IPFS_PATH="$(cat "$RUN/repo")" exec "$JSIPFS" --api "$(cat "$RUN/api")" "$@"
}

run_cmd() {
  [[ $# -gt 0 ]] || die "usage: $0 run COMMAND [ARGS…]"
  install
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
  cli) shift; cli "$@" ;;
  run) shift; run_cmd "$@" ;;
  *) die "usage: $0 install|start|stop|env|cli ARGS|run CMD" ;;
esac
