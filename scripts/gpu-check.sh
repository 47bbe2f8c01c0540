#!/usr/bin/env bash
# Hardware check on an NVIDIA host, for operators and pilot participants before they attach a
# rig: what comine reads through NVML, whether NVDEC decodes and NVENC opens (or fails over to
# libx264 with the driver's reason), the `--test-transcoder` verdict, the calibrated rate, and
# one daemon job placed on the GPU with the device in its ledger entry. Every step is bounded by
# `timeout`; a failing step is recorded and the rest still run. Results: OUT/gpu-check.log (every
# command and its output) and OUT/gpu-check.json (one verdict per step).
#
# Usage: scripts/gpu-check.sh [--bin PATH] [--media DIR] [--out DIR]
#   --bin    the comine binary (default: target/release/comine, else `comine` on PATH)
#   --media  a folder with seg720.ts and seg1080.ts (2-second H.264 MPEG-TS segments); made with
#            the ffmpeg CLI when it is missing and ffmpeg is installed
#   --out    where the log and the JSON go (default ./gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=""; MEDIA=""; OUTDIR="gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift 2;;
    --media) MEDIA=$2; shift 2;;
    --out) OUTDIR=$2; shift 2;;
    *) echo "gpu-check: unknown argument $1 (use --bin, --media, --out)" >&2; exit 2;;
  esac
done
[ -n "$BIN" ] || { [ -x target/release/comine ] && BIN=target/release/comine; } || BIN=$(command -v comine || true)
[ -x "$BIN" ] || { echo "gpu-check: no comine binary (build with cargo build --release, or pass --bin)" >&2; exit 2; }
mkdir -p "$OUTDIR"; OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/gpu-check.log; RES=$OUTDIR/results.tsv; : >"$LOG"; : >"$RES"
WORK=$(mktemp -d); trap 'kill $DAEMON 2>/dev/null; rm -rf "$WORK"' EXIT; DAEMON=""
if [ -z "$MEDIA" ]; then
  MEDIA=$WORK/media; mkdir -p "$MEDIA"
  for s in 720:1280x720 1080:1920x1080; do
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=${s#*:}:rate=30" \
      -f lavfi -i sine=frequency=440:sample_rate=48000 -t 2 -c:v libx264 -preset veryfast -g 60 \
      -c:a aac -f mpegts "$MEDIA/seg${s%%:*}.ts" || { echo "gpu-check: pass --media (no ffmpeg CLI to make segments)" >&2; exit 2; }
  done
fi

# step NAME EXPECT CMD…: runs CMD (bounded), logs it, records rc; EXPECT is ok|fail|any.
step() {
  local name=$1 expect=$2; shift 2
  echo "=== $name: $*" >>"$LOG"
  timeout 300 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; local rc=$?
  cat "$WORK/$name.out" >>"$LOG"; sed 's/^/[stderr] /' "$WORK/$name.err" >>"$LOG"
  echo "--- rc=$rc" >>"$LOG"
  printf '%s\t%s\t%s\n' "$name" "$expect" "$rc" >>"$RES"
  return 0
}

command -v nvidia-smi >/dev/null && step nvidia_smi any nvidia-smi \
  --query-gpu=name,uuid,driver_version,memory.total,memory.used,power.draw,temperature.gpu,utilization.gpu,utilization.decoder,utilization.encoder,encoder.stats.sessionCount \
  --format=csv
step gpu_status ok "$BIN" gpu status --json
# NVDEC decode with libx264 encodes, while NVML is read: the decoder engine must show load.
"$BIN" gpu status --json --watch --count 12 --interval-ms 250 >"$WORK/watch.out" 2>/dev/null &
WATCH=$!
step transcode_nvdec ok "$BIN" -q transcode "$MEDIA/seg1080.ts" --out "$WORK/nvdec" --decoder nvdec --encoder x264 --json
wait $WATCH; cp "$WORK/watch.out" "$OUTDIR/gpu-watch.jsonl"
step transcode_auto ok "$BIN" -q transcode "$MEDIA/seg720.ts" --out "$WORK/auto" --encoder auto --decoder auto --json
step transcode_nvenc any "$BIN" -q transcode "$MEDIA/seg720.ts" --out "$WORK/nvenc" --encoder nvenc --json
step calibrate ok "$BIN" calibrate --json --data-dir "$WORK/data"

# --test-transcoder under the default config (encoder = auto): fails fast where NVENC cannot
# open, passes where it can. The daemon would go on serving after a pass, so it is stopped.
echo "=== test_transcoder_auto" >>"$LOG"
timeout 120 "$BIN" run --test-transcoder --data-dir "$WORK/tt" --listen 127.0.0.1:0 >"$WORK/tt.out" 2>&1 &
TT=$!
for _ in $(seq 1 120); do
  kill -0 $TT 2>/dev/null || break
  grep -q "API listening" "$WORK/tt.out" && { kill -TERM $TT; break; }
  sleep 1
done
wait $TT; TTRC=$?; cat "$WORK/tt.out" >>"$LOG"; echo "--- rc=$TTRC" >>"$LOG"
grep -q "API listening" "$WORK/tt.out" && TTRC=0
printf 'test_transcoder_auto\tany\t%s\n' "$TTRC" >>"$RES"

# One daemon job through the API (x264 encodes, NVDEC decode): placement, device in the
# ledger, GPU metrics.
mkdir -p "$WORK/d"
printf '[transcode]\nencoder = "x264"\ndecoder = "auto"\n' >"$WORK/d.toml"
"$BIN" run --config "$WORK/d.toml" --data-dir "$WORK/d" --listen 127.0.0.1:0 >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 1 120); do [ -s "$WORK/d/api.addr" ] && break; sleep 1; done
python3 - "$WORK/d" "$MEDIA/seg720.ts" "$OUTDIR" >>"$LOG" 2>&1 <<'PY'
import json, sys, urllib.request
data, seg, out = sys.argv[1:]
addr = open(f"{data}/api.addr").read().strip()
token = open(f"{data}/api-token").read().strip()
def call(path, body=None, method="GET"):
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()
job = json.loads(call("/v1/transcode?profiles=P240p30fps16x9,P360p30fps16x9,P720p30fps16x9&class=live&manifest_id=gpucheck&seq=1",
                      open(seg, "rb").read(), "POST"))
status = json.loads(call("/v1/status"))
metrics = call("/metrics").decode()
json.dump({"job": job, "status": status}, open(f"{out}/daemon-job.json", "w"), indent=1)
open(f"{out}/metrics.txt", "w").write(metrics)
print("job", job.get("state"), job.get("device"), [r.get("encoder") for r in job.get("renditions", [])])
print("gpu metrics", sum(1 for l in metrics.splitlines() if l.startswith("comine_gpu_")))
PY
printf 'daemon_job\tok\t%s\n' "$?" >>"$RES"
step ledger_export ok "$BIN" ledger export --data-dir "$WORK/d" --since 2000-01-01 --format json
kill -TERM $DAEMON; wait $DAEMON; DAEMON=""
cp "$WORK/daemon.log" "$OUTDIR/daemon.log"

# One JSON verdict per step: rc, whether it met its expectation, and the key facts.
python3 - "$WORK" "$RES" "$OUTDIR" <<'PY'
import json, os, sys
work, res, out = sys.argv[1:]
def load(name):
    try: return json.load(open(f"{work}/{name}.out"))
    except Exception: return None
steps = {}
for line in open(res):
    name, expect, rc = line.rstrip("\n").split("\t")
    rc = int(rc)
    steps[name] = {"rc": rc, "expect": expect,
                   "met": expect == "any" or (rc == 0) == (expect == "ok")}
gs = load("gpu_status") or {}
steps.setdefault("gpu_status", {})["facts"] = {
    "source": gs.get("source"),
    "devices": [{k: d.get(k) for k in ("name", "uuid", "driver", "memory_total_bytes", "power_watts",
                 "temperature_c", "session_cap", "encoder_capacity_pct", "nvenc_sessions", "processes", "source")}
                for d in gs.get("devices", [])]}
for n in ("transcode_nvdec", "transcode_auto", "transcode_nvenc"):
    v = load(n)
    if v: steps[n]["facts"] = {"decoder": v.get("decoder"), "fallback_reason": v.get("fallback_reason"),
                               "wall_ms": v.get("wall_ms"), "encoders": [r.get("encoder") for r in v.get("renditions", [])],
                               "encoded_pixels": v.get("encoded_pixels")}
    elif os.path.exists(f"{work}/{n}.err"):
        steps[n]["stderr"] = open(f"{work}/{n}.err").read()[-600:]
dec = []
try:
    for l in open(f"{out}/gpu-watch.jsonl"):
        for d in json.loads(l).get("devices", []):
            dec.append(d.get("decoder_util_pct"))
except Exception: pass
steps["transcode_nvdec"]["decoder_util_pct_seen"] = dec
steps["calibrate"]["facts"] = load("calibrate")
summary = {"steps": steps, "all_met": all(s.get("met", False) for s in steps.values())}
json.dump(summary, open(f"{out}/gpu-check.json", "w"), indent=1)
print(json.dumps({k: (v["rc"], v["met"]) for k, v in steps.items()}))
PY
