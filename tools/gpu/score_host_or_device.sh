#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: is a scoring pass bound by the host or by the
# device? Scores a random 20b at 2048 tokens per row with BATCHES rows (default "8 4 2"; the
# launches per pass stay the same while the device's work scales with the rows), then at 8 rows
# with each of TASKS commands per submission (CUBECL_WGPU_MAX_TASKS, default "32 512"). A pass
# bound by the device shrinks with the rows; one bound by the host does not, and its seconds
# until queued stay near the pass's seconds. nvidia-smi samples the GPU every 100 ms during each
# run (utilization: the share of time some kernel ran; SM clock; power; throttle reasons), and
# each run's line ends with the median of the busy samples: gaps between kernels show as
# utilization under 100%, lowered clocks as an SM clock under the 1980 MHz the card reaches under light load.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
score() { # score NAME BATCH: one `bench model` scoring run, summarised on one line
  nvidia-smi --query-gpu=utilization.gpu,clocks.sm,power.draw,clocks_event_reasons.active \
    --format=csv,noheader,nounits -lms 100 > "$out/gpu-$1.csv" 2> /dev/null &
  local sampler=$!
  timeout 150 "$BIN" bench model --model "$dir" --device wgpu --experts packed --batch "$2" --seq 2048 \
    --iters 2 --decode-batches 0 > "$out/score-$1.jsonl" 2> "$out/score-$1.log"
  local status=$?
  kill "$sampler" 2> /dev/null
  [ $status -eq 0 ] || { echo "$1 failed:"; tail -3 "$out/score-$1.log" | cut -c1-300; return; }
  python3 - "$out/score-$1.jsonl" "$1" "$out/gpu-$1.csv" <<'PY'
import json, statistics, sys
busy = []
for row in open(sys.argv[3]):
    fields = [f.strip() for f in row.split(",")]
    if len(fields) == 4 and fields[0].isdigit() and int(fields[0]) >= 50:
        busy.append((int(fields[0]), float(fields[1]), float(fields[2]), fields[3]))
gpu = "no busy samples"
if busy:
    reasons = sorted({b[3] for b in busy})
    gpu = (f"busy samples {len(busy)}: utilization {statistics.median(b[0] for b in busy):.0f}%, "
           f"SM clock {statistics.median(b[1] for b in busy):.0f} MHz, power "
           f"{statistics.median(b[2] for b in busy):.0f} W, throttle reasons {reasons}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("bench") != "score":
        continue
    host = {k: round(v, 3) for k, v in (r.get("host_cpu_seconds_by_thread") or {}).items()}
    print(f"{sys.argv[2]}: {r['tokens_per_second']:.0f} tok/s, {r['seconds']:.3f} s per pass "
          f"({r.get('queued_seconds', float('nan')):.3f} s until queued), host CPU s per pass {host}; {gpu}")
PY
}
for batch in ${BATCHES:-8 4 2}; do score "batch$batch" "$batch"; done
for tasks in ${TASKS:-32 512}; do CUBECL_WGPU_MAX_TASKS=$tasks score "batch8-tasks$tasks" 8; done
