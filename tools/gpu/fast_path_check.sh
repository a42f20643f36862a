#!/usr/bin/env bash
# On the GPU machine: fidelity of the fast GPU path (grouped MXFP4 experts, bf16 non-expert
# weights) and of the f32 GPU path against the CPU reference, then bench model on a random 20b.
set -uo pipefail
out=${OUT:-/tmp/out}
for m in models/oss-nano tools/reference/out/tiny-mxfp4; do
  timeout 150 python3 tools/gpu/compare_devices.py "$BIN" $m --moe per-expert --weights f32
  timeout 150 python3 tools/gpu/compare_devices.py "$BIN" $m
done
dir=/tmp/synth-20b
timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
timeout ${BENCH_TIMEOUT:-300} "$BIN" bench model --model "$dir" --device wgpu --experts packed \
  --batch 8 --seq 2048 --iters 2 --decode-batches 1,32 --new-tokens ${NEW_TOKENS:-16} ${EXTRA:-} \
  > "$out/bench-20b.jsonl" 2> "$out/bench-20b.log" || { echo "bench failed:"; grep -v "^\s*$\|Tuning" "$out/bench-20b.log" | tail -6 | cut -c1-300; }
cat "$out/bench-20b.jsonl"
