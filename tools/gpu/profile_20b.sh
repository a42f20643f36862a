#!/usr/bin/env bash
# On the GPU machine: where scoring (8 x 2048) and batch-1 decode spend device time on a random
# 20b (cubecl's per-kernel profile, summed by tools/gpu/profile_summary.py; autotune runs and the
# untimed first pass are included, so read the shares as rough). BATCH and SEQ change the scored
# shape: BATCH=1 SEQ=16 profiles the forward pass a batch-1 prefill of 16 tokens runs (24.5-28.7 ms a
# pass on an H200; profiled in the thirty-eighth round: the experts are three quarters).
set -uo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$out/profile-score.log" timeout 240 "$BIN" bench model \
  --model "$dir" --device wgpu --experts packed --batch "${BATCH:-8}" --seq "${SEQ:-2048}" --iters 2 --decode-batches 0 \
  2> "$out/bench-score.log"
python3 tools/gpu/profile_summary.py "$out/profile-score.log" 25
CUBECL_DEBUG_OPTION=profile CUBECL_DEBUG_LOG="$out/profile-decode.log" timeout 200 "$BIN" bench model \
  --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 --iters 1 --decode-batches 1 --new-tokens 16 \
  2> "$out/bench-decode.log"
python3 tools/gpu/profile_summary.py "$out/profile-decode.log" 20
gzip -f "$out"/profile-*.log
