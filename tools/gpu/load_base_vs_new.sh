#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: loading a random 20b with the carried binary
# ($BIN) and, when .bench/base.xz is carried, an earlier binary in the same call, alternating
# base / new ROUNDS times (default 2). Each run loads, scores one short pass (1 x 16) and exits;
# nvidia-smi samples the memory every 50 ms. Prints each run's load time (with the host's part,
# where the binary logs it) and nvidia-smi's peak during the load and after it
# (tools/gpu/memory_phases.py). The thirty-first round's calls 2 and 4 ran these commands.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
load_run() { # load_run NAME BINARY ROUND
  local file="$out/load-$1-$3"
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 50 \
    > "$file.mem.csv" &
  local smi=$!
  timeout 200 "$2" bench model --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 \
    --iters 1 --decode-batches 0 > "$file.jsonl" 2> "$file.log" \
    || { echo "$1 failed:"; tail -3 "$file.log" | cut -c1-300; }
  kill "$smi"
  python3 "$(dirname "$0")/memory_phases.py" "$file.mem.csv" "$file.log" "$1 round $3"
}
alternate_runs load_run
