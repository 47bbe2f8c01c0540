#!/usr/bin/env bash
# Real Kubo (go-ipfs) nodes for the store tests and benchmarks, offline on loopback.
#
# Kubo is built once from its Go module (github.com/ipfs/kubo@v0.43.1, ./cmd/ipfs, fetched through
# the Go module proxy; see install() for the one go-libp2p replace) into a cache outside the
# clone, so a clean clone (CI) reuses it:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/comine/kubo-v0.43.1/ipfs
#
#   scripts/kubo-test-node.sh install        # build Kubo into the cache (once; minutes)
#   scripts/kubo-test-node.sh bin            # prints the cached binary's path
#   scripts/kubo-test-node.sh start [NAME]   # init an offline repo (first time), start the daemon by PID
#   scripts/kubo-test-node.sh env [NAME]     # prints: export COMINE_TEST_IPFS_API=… (and the repo, the binary)
#   scripts/kubo-test-node.sh kill [NAME]    # SIGKILL by PID, keep the repo and ports (a crash; `start` brings it back)
#   scripts/kubo-test-node.sh stop [NAME]    # SIGTERM by PID (then SIGKILL), remove the repo
#   scripts/kubo-test-node.sh cli [NAME] -- ARGS  # `ipfs ARGS` against that node's repo (benchmarks)
#   scripts/kubo-test-node.sh run CMD…       # install + start, run CMD with the env exported, stop; CMD's status
#
# NAME defaults to `default`; each name is a separate node with its own repo and ports. The
# first start lets the kernel pick the ports (tcp/0) and then writes them into the repo's
# config, so a node that was killed comes back on the same API address.
#
# Env: COMINE_KUBO_RUN_DIR (default <clone>/.tools/kubo-run) holds pid/api/repo per node.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="v0.43.1"
# The Go the module asks for (its go.mod says `go 1.26.5`); fetched from the proxy when the
# machine has no Go at all.
GO_TOOLCHAIN="go1.26.8"
LIBP2P="v0.50.0"
LIBP2P_SUM="github.com/libp2p/go-libp2p v0.50.0 h1:A0tBP6mr6GV7l5ip2Q04a/IxPqVYYaCiif5s8JuXkN4=
github.com/libp2p/go-libp2p v0.50.0/go.mod h1:RjqB+dxCWNZ33yw0yeK5Pu157oNxKuaTZY6vLed4t8w="
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/comine"
KUBO_DIR="$CACHE/kubo-$VERSION"
IPFS="$KUBO_DIR/ipfs"
RUN_ROOT="${COMINE_KUBO_RUN_DIR:-$ROOT/.tools/kubo-run}"

die() { echo "kubo-test-node: $*" >&2; exit 1; }
log() { echo "kubo-test-node: $*" >&2; }

node_name() {
  local n="${1:-default}"
  [[ "$n" =~ ^[A-Za-z0-9_.-]+$ ]] || die "node name '$n' may only use letters, digits, '.', '_' and '-'"
  echo "$n"
}

# A Go toolchain: the machine's (any Go >= 1.21 fetches the toolchain Kubo's go.mod asks for
# from the module proxy by itself), else the toolchain module from the proxy, cached.
ensure_go() {
  # The official tarball's place, often not on a non-login shell's PATH.
  if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH="/usr/local/go/bin:$PATH"
  fi
  if command -v go >/dev/null 2>&1; then
    local v; v="$(go env GOVERSION 2>/dev/null || true)"
    if [[ "$v" =~ ^go1\.([0-9]+) ]] && (( BASH_REMATCH[1] >= 21 )); then
      GO=go; return 0
    fi
    log "the Go on PATH ($v) is older than 1.21 and cannot fetch newer toolchains; using a cached one"
  fi
  local arch
  case "$(uname -m)" in
    x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) die "no Go toolchain for $(uname -m): install Go >= 1.26.5" ;;
  esac
  local mod="v0.0.1-$GO_TOOLCHAIN.linux-$arch" dir="$CACHE/$GO_TOOLCHAIN"
  local gobin="$dir/golang.org/toolchain@$mod/bin/go"
  if [[ ! -x "$gobin" ]]; then
    command -v curl >/dev/null || die "curl is needed to fetch the Go toolchain (or install Go >= 1.26.5)"
    command -v unzip >/dev/null || die "unzip is needed to unpack the Go toolchain (apt-get install unzip, or install Go >= 1.26.5)"
    local proxy="${GOPROXY:-https://proxy.golang.org}"; proxy="${proxy%%,*}"
    log "fetching Go $GO_TOOLCHAIN from $proxy (golang.org/toolchain@$mod)"
    mkdir -p "$dir"
    local zip="$dir/toolchain.zip.partial"
    curl -fsSL --retry 3 -o "$zip" "$proxy/golang.org/toolchain/@v/$mod.zip" \
      || die "could not download the Go toolchain from $proxy: install Go >= 1.26.5 yourself"
    (cd "$dir" && unzip -q -o "$zip") || die "could not unpack $zip"
    rm -f "$zip"
    chmod +x "$dir/golang.org/toolchain@$mod/bin/"* "$dir/golang.org/toolchain@$mod/pkg/tool/"*/* 2>/dev/null || true
  fi
  GO="$gobin"
}

installed() {
  [[ -x "$IPFS" ]] && "$IPFS" version 2>/dev/null | grep -q "ipfs version ${VERSION#v}"
}

install() {
  if installed; then
    log "Kubo $VERSION cached at $IPFS"
    return 0
  fi
  ensure_go
  mkdir -p "$KUBO_DIR"
  # Build into a temp dir and rename: an interrupted build never leaves a half binary behind.
  local tmp; tmp="$(mktemp -d "$KUBO_DIR/build.XXXXXX")"
  log "building Kubo $VERSION with $("$GO" env GOVERSION 2>/dev/null || echo go) (about 8 min on 2 cores the first time, once)"
  local t0=$SECONDS
  # Kubo's go.mod replaces go-libp2p with a pre-release fork (github.com/lidel/go-libp2p, "drop
  # once a go-libp2p release requires quic-go >= v0.62.0 and webtransport-go >= v0.13.0"). The
  # module proxy does not serve that fork, and `go install pkg@version` refuses modules with a
  # replace anyway. go-libp2p v0.50.0 is the release that TODO waits for (it requires exactly
  # quic-go v0.62.0 and webtransport-go v0.13.0), so we build Kubo's own module with the replace
  # pointing there; every other dependency is the one in Kubo's go.sum. Its checksums are
  # pinned here, so the build never needs the checksum database.
  local src
  src="$("$GO" mod download -json "github.com/ipfs/kubo@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$src" && -f "$src/go.mod" ]] || { rm -rf "$tmp"; die "go mod download github.com/ipfs/kubo@$VERSION failed (is the Go module proxy reachable? GOPROXY=$("$GO" env GOPROXY 2>/dev/null))"; }
  cp -r "$src" "$tmp/src" && chmod -R u+w "$tmp/src"
  (cd "$tmp/src" && "$GO" mod edit -replace "github.com/libp2p/go-libp2p=github.com/libp2p/go-libp2p@$LIBP2P" \
    && printf '%s\n' "$LIBP2P_SUM" >> go.sum) || { rm -rf "$tmp"; die "could not prepare Kubo's module in $tmp/src"; }
  if ! GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
      "$GO" build -C "$tmp/src" -mod=readonly -trimpath -o "$tmp/ipfs" ./cmd/ipfs; then
    rm -rf "$tmp"
    die "building github.com/ipfs/kubo/cmd/ipfs@$VERSION failed (is the Go module proxy reachable? GOPROXY=$("$GO" env GOPROXY 2>/dev/null))"
  fi
  mv -f "$tmp/ipfs" "$IPFS"
  rm -rf "$tmp"
  installed || die "built $IPFS but it does not report version $VERSION"
  log "built Kubo $VERSION in $((SECONDS - t0)) s: $IPFS"
}

run_dir() { echo "$RUN_ROOT/$1"; }

running_pid() {
  local d; d="$(run_dir "$1")"
  [[ -f "$d/pid" ]] || return 1
  local pid; pid="$(cat "$d/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# Offline, loopback-only configuration. AutoConf is off so nothing is fetched from the network,
# and no bootstrap peers, no routing, no MDNS, no swarm listeners.
configure() {
  local repo="$1"
  IPFS_PATH="$repo" "$IPFS" init --empty-repo --profile=test >"$repo.init.log" 2>&1 \
    || { cat "$repo.init.log" >&2; die "ipfs init failed"; }
  rm -f "$repo.init.log"
  local kv=(
    "Addresses.API" '"/ip4/127.0.0.1/tcp/0"'
    "Addresses.Gateway" '"/ip4/127.0.0.1/tcp/0"'
    "Addresses.Swarm" '[]'
    "Addresses.Announce" '[]'
    "Addresses.NoAnnounce" '[]'
    "Bootstrap" '[]'
    "AutoConf.Enabled" 'false'
    "Routing.Type" '"none"'
    "Routing.DelegatedRouters" '[]'
    "Ipns.DelegatedPublishers" '[]'
    "DNS.Resolvers" '{}'
    "Discovery.MDNS.Enabled" 'false'
    "Swarm.DisableNatPortMap" 'true'
  )
  local i
  for ((i = 0; i < ${#kv[@]}; i += 2)); do
    IPFS_PATH="$repo" "$IPFS" config --json "${kv[i]}" "${kv[i+1]}" >/dev/null \
      || die "ipfs config ${kv[i]} failed"
  done
}

# After the first start, pin the kernel-chosen ports into the config so a restart reuses them.
pin_ports() {
  local repo="$1" api="$2" gw="$3"
  IPFS_PATH="$repo" "$IPFS" config Addresses.API "$api" >/dev/null
  IPFS_PATH="$repo" "$IPFS" config Addresses.Gateway "$gw" >/dev/null
}

start() {
  local name; name="$(node_name "${1:-}")"
  installed || die "Kubo $VERSION is not built: run '$0 install' first"
  local d; d="$(run_dir "$name")"
  if pid="$(running_pid "$name")"; then
    log "node '$name' already running (pid $pid, api $(cat "$d/api"))"
    return 0
  fi
  mkdir -p "$d"
  local repo
  if [[ -f "$d/repo" && -f "$(cat "$d/repo")/config" ]]; then
    repo="$(cat "$d/repo")"          # coming back after a kill: same repo, same ports
    rm -f "$repo/api" "$repo/repo.lock"
  else
    repo="$(mktemp -d "${TMPDIR:-/tmp}/comine-kubo.XXXXXX")"
    echo "$repo" > "$d/repo"
    configure "$repo"
  fi
  IPFS_PATH="$repo" nohup "$IPFS" daemon --offline --migrate=false >"$d/daemon.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$d/pid"
  # The daemon writes its API multiaddr to $repo/api once it listens.
  local t0=$SECONDS
  while (( SECONDS - t0 < 60 )); do
    if [[ -s "$repo/api" ]]; then
      local maddr port url
      maddr="$(cat "$repo/api")"
      port="${maddr##*/tcp/}"; port="${port%%/*}"
      url="http://127.0.0.1:$port"
      if curl -fsS -m 2 -X POST "$url/api/v0/version" >/dev/null 2>&1; then
        echo "$url" > "$d/api"
        local gw; gw="$(grep -oE 'Gateway server listening on /ip4/127.0.0.1/tcp/[0-9]+' "$d/daemon.log" | head -1 | sed 's/.* on //')"
        if [[ -n "$gw" && ! -f "$d/ports-pinned" ]]; then
          pin_ports "$repo" "$maddr" "$gw" && touch "$d/ports-pinned"
        fi
        log "Kubo $VERSION '$name' up: pid $pid, api $url, repo $repo"
        return 0
      fi
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$d/daemon.log" >&2; die "ipfs daemon '$name' exited during start"; }
    sleep 0.2
  done
  cat "$d/daemon.log" >&2
  kill "$pid" 2>/dev/null || true
  die "ipfs daemon '$name' did not answer within 60 s"
}

kill_node() {
  local name; name="$(node_name "${1:-}")"
  if pid="$(running_pid "$name")"; then
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "node '$name' (pid $pid) killed; repo kept for '$0 start $name'"
  fi
}

stop() {
  local name; name="$(node_name "${1:-}")"
  local d; d="$(run_dir "$name")"
  if pid="$(running_pid "$name")"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "node '$name' (pid $pid) stopped"
  fi
  if [[ -f "$d/repo" ]]; then
    local repo; repo="$(cat "$d/repo")"
    [[ "$repo" == */comine-kubo.* ]] && rm -rf "$repo"
  fi
  rm -rf "$d"
}

env_cmd() {
  local name; name="$(node_name "${1:-}")"
  local d; d="$(run_dir "$name")"
  running_pid "$name" >/dev/null && [[ -f "$d/api" ]] || die "node '$name' is not running: run '$0 start $name' first"
  echo "export COMINE_TEST_IPFS_API=$(cat "$d/api")"
  echo "export COMINE_TEST_IPFS_REPO=$(cat "$d/repo")"
  echo "export COMINE_TEST_KUBO_BIN=$IPFS"
}

cli() {
  local name="default"
  if [[ $# -gt 0 && "$1" != "--" ]]; then name="$(node_name "$1")"; shift; fi
  [[ "${1:-}" == "--" ]] && shift
  local d; d="$(run_dir "$name")"
  [[ -f "$d/repo" ]] || die "node '$name' is not running: run '$0 start $name' first"
  IPFS_PATH="$(cat "$d/repo")" exec "$IPFS" "$@"
}

run_cmd() {
  [[ $# -gt 0 ]] || die "usage: $0 run COMMAND [ARGS…]"
  install
  start default
  trap 'stop default' EXIT
  eval "$(env_cmd default)"
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

case "${1:-}" in
  install) install ;;
  bin) installed || die "Kubo $VERSION is not built: run '$0 install'"; echo "$IPFS" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  kill) shift; kill_node "$@" ;;
  env) shift; env_cmd "$@" ;;
  cli) shift; cli "$@" ;;
  run) shift; run_cmd "$@" ;;
  *) die "usage: $0 install|bin|start [NAME]|stop [NAME]|kill [NAME]|env [NAME]|cli [NAME] -- ARGS|run CMD…" ;;
esac
