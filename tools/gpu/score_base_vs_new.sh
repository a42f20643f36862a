#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: scoring a random 20b (8 x 2048 tokens, routing
# recorded and not) with the carried binary ($BIN) and, when .bench/base.xz is carried, an
# earlier binary in the same call, alternating base / new ROUNDS times (default 2): two runs of
# one binary differ by 2-3%, so a smaller difference between the binaries is noise. Prints each
# run's tokens/s, the seconds until the pass was queued (before the read that waits for the
# device), recording overhead and the host's busiest thread per pass. With TORCH=1, then
# transformers eager on the same card (tools/gpu/torch_baseline.py) for the multiple. With
# VARIANTS="--grouped-tiling=128x256x32/tcdweg --grouped-tiling=128x320x32/tcdweg", the
# carried binary alone runs once per variant (its extra `bench model` arguments, joined by
# commas: "--grouped-tiling=A,--dense-tiling=B") in each round instead.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
if [ -n "${VARIANTS:-}" ]; then
  bins=()
  for variant in $VARIANTS; do bins+=("$variant:$BIN"); done
fi
score_run() { # score_run NAME BINARY ROUND
  local name=$1 bin=$2 round=$3 variant=()
  local file="$out/score-${name//[\/=,]/-}-$round"
  [ -n "${VARIANTS:-}" ] && IFS=, read -ra variant <<< "$name"
  timeout 150 "$bin" bench model --model "$dir" --device wgpu --experts packed --batch 8 --seq 2048 \
    --iters 2 --decode-batches 0 "${variant[@]}" > "$file.jsonl" 2> "$file.log" \
    || { echo "$name failed:"; tail -3 "$file.log" | cut -c1-300; return; }
  python3 - "$file.jsonl" "$name" "$round" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("bench") != "score":
        continue
    host = r.get("host_cpu_seconds_by_thread") or {}
    busiest = max(host.items(), key=lambda kv: kv[1]) if host else ("-", 0)
    print(f"{sys.argv[2]} {sys.argv[3]}: {r['tokens_per_second']:.0f} tok/s, {r['seconds']:.3f} s per pass "
          f"({r.get('queued_seconds', float('nan')):.3f} s until queued), recording "
          f"{100 * r['recording_overhead']:+.1f}%, busiest host thread {busiest[0]} {busiest[1]:.3f} s per pass")
PY
}
alternate_runs score_run
if [ "${TORCH:-0}" = 1 ]; then
  timeout 200 python3 tools/gpu/torch_baseline.py model --config crates/model/src/presets/gpt-oss-20b.json \
    --batch 8 --seq 2048 --iters 2 --new-tokens 2 2>&1 | grep torch_score | cut -c1-200
fi
