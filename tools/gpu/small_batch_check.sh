#!/usr/bin/env bash
# On the GPU machine: every kernel against its burn-ops reference (bench kernel-check), the
# few-rows bf16 product against the tensor-core GEMM at decoding shapes, then decode throughput
# on a random 20b at batch 1 and 32.
set -uo pipefail
out=${OUT:-/tmp/out}
timeout 150 "$BIN" bench kernel-check --device wgpu > "$out/kernel-check.jsonl" 2> "$out/kernel-check.log" \
  || { echo "kernel-check failed:"; grep -v "^\s*$\|Tuning" "$out/kernel-check.log" | tail -5 | cut -c1-300; }
cat "$out/kernel-check.jsonl"
for kernel in rows coopmat; do
  timeout 100 "$BIN" bench matmul --device wgpu --kernel $kernel --dtypes bf16 \
    --shapes 1x2880x4096,1x4096x2880,1x2880x512,32x2880x4096,1x2880x100000 2> /dev/null \
    | python3 -c "import json,sys; [print(json.dumps({k: r[k] for k in ('kernel','m','k','n','seconds','weight_gb_per_second','relative_error_vs_burn_f32')})) for r in map(json.loads, sys.stdin)]"
done
dir=/tmp/synth-20b
timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
timeout ${BENCH_TIMEOUT:-200} "$BIN" bench model --model "$dir" --device wgpu --experts packed \
  --batch 1 --seq 16 --iters 1 --decode-batches 1,32 --new-tokens ${NEW_TOKENS:-32} \
  > "$out/bench-decode.jsonl" 2> "$out/bench-decode.log" \
  || { echo "bench failed:"; grep -v "^\s*$\|Tuning" "$out/bench-decode.log" | tail -6 | cut -c1-300; }
cat "$out/bench-decode.jsonl"
