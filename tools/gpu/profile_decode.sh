#!/usr/bin/env bash
# On the GPU machine: batch-1 decode on a random 20b, first timed without profiling, then with
# cubecl's per-kernel profile (each launch synchronised, about 11 us of overhead each), summed
# by tools/gpu/profile_summary.py with the mean per launch.
set -uo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
timeout 200 "$BIN" bench model --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 \
  --iters 1 --decode-batches 1 --new-tokens 32 > "$out/decode.jsonl" 2> "$out/decode.log"
grep decode "$out/decode.jsonl"
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$out/profile-decode.log" timeout 200 "$BIN" bench model \
  --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 --iters 1 --decode-batches 1 --new-tokens 32 \
  > "$out/profile-decode.jsonl" 2> "$out/profile-decode-bench.log"
grep decode "$out/profile-decode.jsonl"
python3 tools/gpu/profile_summary.py "$out/profile-decode.log" 30
gzip -f "$out"/profile-decode.log
