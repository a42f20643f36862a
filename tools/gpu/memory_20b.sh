#!/usr/bin/env bash
# Issue 5's memory table on the GPU machine: a random gpt-oss-20b in the release layout, pruned
# to 32/16/8/6/4 experts per layer; bytes on disk per component and GPU memory after load and
# after a 128-token forward pass (MXFP4 experts kept packed). nvidia-smi samples the whole run.
# EXPERTS=32,16,8 limits the budgets (each pruned variant is written to disk first; 32 and
# part of 16 took 100 s in the seventh round).
set -euo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
[ -f "$dir/config.json" ] || "$BIN" synth --preset 20b --out "$dir" --force 2> "$out/synth.log" || { tail -20 "$out/synth.log"; exit 1; }
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu-mem.log" &
smi=$!
"$BIN" bench memory --model "$dir" --work /tmp/variants --device wgpu --delete-variants --experts "${EXPERTS:-32,16,8,6,4}" \
  --tokens 128 > "$out/memory.md" 2> "$out/memory.log" || { kill $smi; tail -30 "$out/memory.log"; exit 1; }
kill $smi
cp /tmp/variants/memory.json "$out/"
cat "$out/memory.md"
grep -E "experts/layer" "$out/memory.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
echo "nvidia-smi peak over the run: $(cut -d, -f2 "$out/gpu-mem.log" | sort -n | tail -1) MiB"
