#!/usr/bin/env bash
# On the GPU machine: the grouped MoE kernel against the CPU reference on the MXFP4 fixture,
# then scoring and decode throughput on a random full-size gpt-oss-20b (bench model).
set -uo pipefail
out=${OUT:-/tmp/out}
for moe in per-expert grouped; do
  timeout 120 python3 tools/gpu/compare_devices.py "$BIN" tools/reference/out/tiny-mxfp4 --moe $moe --experts packed
done
dir=/tmp/synth-20b
timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
run_bench() {  # name, then bench model arguments
  local name=$1; shift
  timeout ${BENCH_TIMEOUT:-200} "$BIN" bench model --model "$dir" --device wgpu --experts packed "$@" \
    > "$out/bench-$name.jsonl" 2> "$out/bench-$name.log" || { echo "$name failed:"; grep -v "^\s*$" "$out/bench-$name.log" | tail -4 | cut -c1-300; }
  echo "== $name"; cat "$out/bench-$name.jsonl"
}
[ -n "${SKIP_SMALL:-}" ] || run_bench small --batch ${SMALL_BATCH:-4} --seq ${SMALL_SEQ:-512} --iters 2 --decode-batches 1 --new-tokens 16
[ -n "${SKIP_FULL:-}" ] || run_bench full --batch 8 --seq 2048 --iters 2 --decode-batches ${DECODE:-32} --new-tokens 8
