#!/usr/bin/env bash
# Checks that the module graph follows the data path (docs/architecture.md, "Layers"):
# a module imports only modules in a lower layer, so the graph has no cycle and nothing
# imports daemon, bench or config except the top. Prints every edge between top-level
# modules and exits non-zero on a violation, a cycle or a module missing from the list.
#
# A module is the first path component under src/ (src/X.rs or src/X/…). Each module's
# `cli.rs` (or `cli/`) and src/main.rs form the `cli` layer: the shell of a subcommand,
# which may read the config and talk to the daemon; nothing else may import a `cli`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Lowest first. Modules on one line share a layer and may not import each other.
layers=(
  "util paths logging db"   # foundations
  "livepeer"                # intake protocol (segments arrive)
  "gpu seal"                # telemetry, sealing controllers
  "post"                    # proving schedule (over seal's JSON-RPC client)
  "sched"                   # admission and sealing decisions
  "transcode ai"            # the work
  "store"                   # renditions kept
  "ledger"                  # accounted
  "metrics earnings"        # reported, paid
  "report"                  # benchmark reports (schema, renderers)
  "config"                  # the daemon's TOML
  "daemon bench"            # compose everything
  "cli"                     # subcommands: src/main.rs and every src/*/cli.rs
)

declare -A layer_of
for i in "${!layers[@]}"; do
  for m in ${layers[$i]}; do layer_of[$m]=$i; done
done

module_of() { # path -> module name
  local rel=${1#src/}
  case "$rel" in
    main.rs | */cli.rs | */cli/*) echo cli ;;
    */*) echo "${rel%%/*}" ;;
    *) echo "${rel%.rs}" ;;
  esac
}

fail=0
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT

while IFS= read -r file; do
  [[ "$file" == src/lib.rs ]] && continue
  from=$(module_of "$file")
  if [[ -z "${layer_of[$from]+x}" ]]; then
    echo "check-layers: $file: module '$from' is not in the layer list in scripts/check-layers.sh (and docs/architecture.md); add it" >&2
    fail=1
    continue
  fi
  # `crate::x` anywhere (use lines, inline paths, docs links are skipped below).
  while IFS=: read -r line text; do
    # Doc and plain comments name modules freely.
    [[ "$text" =~ ^[[:space:]]*// ]] && continue
    for to in $(grep -oE 'crate::[a-z_][a-z0-9_]*(::cli\b)?' <<<"$text" | sed 's/^crate:://' | sort -u); do
      target=${to%%::*}
      if [[ "$to" == *::cli && "$from" != cli ]]; then
        echo "check-layers: $file:$line: '$from' imports $target::cli; only the cli layer (main.rs, */cli.rs) may" >&2
        fail=1
      fi
      [[ "$target" == "$from" ]] && continue
      if [[ -z "${layer_of[$target]+x}" ]]; then
        echo "check-layers: $file:$line: imports unknown module '$target'" >&2
        fail=1
        continue
      fi
      echo "$from $target" >>"$edges"
      if ((layer_of[$target] >= layer_of[$from])); then
        echo "check-layers: $file:$line: '$from' (layer ${layer_of[$from]}) imports '$target' (layer ${layer_of[$target]}): a module may only import lower layers" >&2
        fail=1
      fi
    done
  done < <(grep -nE 'crate::[a-z_]' "$file" || true)
done < <(find src -name '*.rs' | sort)

echo "module imports (importer -> imported), by layer:"
sort -u "$edges" | while read -r from to; do
  printf '  %-10s (L%-2s) -> %-10s (L%s)\n' "$from" "${layer_of[$from]}" "$to" "${layer_of[$to]}"
done

# An independent cycle check: tsort refuses a graph with a loop.
if ! sort -u "$edges" | awk '{print $2, $1}' | tsort >/dev/null 2>"$edges.tsort"; then
  echo "check-layers: the module graph has a cycle:" >&2
  cat "$edges.tsort" >&2
  fail=1
fi
rm -f "$edges.tsort"

if ((fail)); then
  echo "check-layers: FAILED" >&2
  exit 1
fi
echo "check-layers: OK: $(sort -u "$edges" | wc -l) edges, no cycle, every import points to a lower layer"
