#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: a random 20b's first greedy generation at batch 1
# (where a decode step is first captured), with the carried binary ($BIN) and, when
# .bench/base.xz is carried, an earlier binary in the same call, alternating base / new ROUNDS
# times (default 1). nvidia-smi samples the memory every 50 ms; prints each run's peak during
# the load and after it (tools/gpu/memory_phases.py). The thirty-second round's call 14 saw
# 24,182 MiB after the load, against 16,810 during it: the capture's preparation copied what the
# dynamic pools' outdated pages held (about the experts' bytes), then freed it.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
generation_run() { # generation_run NAME BINARY ROUND
  local file="$out/generation-$1-$3"
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 50 \
    > "$file.mem.csv" &
  local smi=$!
  timeout 200 "$2" bench model --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 \
    --iters 1 --decode-batches 1 --new-tokens 32 > "$file.jsonl" 2> "$file.log" \
    || { echo "$1 failed:"; tail -3 "$file.log" | cut -c1-300; }
  kill "$smi"
  python3 "$(dirname "$0")/memory_phases.py" "$file.mem.csv" "$file.log" "$1 round $3"
}
ROUNDS=${ROUNDS:-1} alternate_runs generation_run
