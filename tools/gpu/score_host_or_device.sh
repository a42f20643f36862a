#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: is a scoring pass bound by the host or by the
# device? Scores a random 20b at 2048 tokens per row with BATCHES rows (default "8 4 2"; the
# launches per pass stay the same while the device's work scales with the rows), then at 8 rows
# with each of TASKS commands per submission (CUBECL_WGPU_MAX_TASKS, default "32 512"). A pass
# bound by the device shrinks with the rows; one bound by the host does not, and its seconds
# until queued stay near the pass's seconds.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
score() { # score NAME BATCH: one `bench model` scoring run, summarised on one line
  timeout 150 "$BIN" bench model --model "$dir" --device wgpu --experts packed --batch "$2" --seq 2048 \
    --iters 2 --decode-batches 0 > "$out/score-$1.jsonl" 2> "$out/score-$1.log" \
    || { echo "$1 failed:"; tail -3 "$out/score-$1.log" | cut -c1-300; return; }
  python3 - "$out/score-$1.jsonl" "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("bench") != "score":
        continue
    host = {k: round(v, 3) for k, v in (r.get("host_cpu_seconds_by_thread") or {}).items()}
    print(f"{sys.argv[2]}: {r['tokens_per_second']:.0f} tok/s, {r['seconds']:.3f} s per pass "
          f"({r.get('queued_seconds', float('nan')):.3f} s until queued), host CPU s per pass {host}")
PY
}
for batch in ${BATCHES:-8 4 2}; do score "batch$batch" "$batch"; done
for tasks in ${TASKS:-32 512}; do CUBECL_WGPU_MAX_TASKS=$tasks score "batch8-tasks$tasks" 8; done
