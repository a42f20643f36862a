#!/usr/bin/env bash
# Issue 3 and 4 on the GPU machine: a short oss-nano training run on wgpu (the GPU trainer
# works), then trace throughput on a random full-size gpt-oss-20b with and without recording.
set -euo pipefail
out=${OUT:-/tmp/out}
timeout 200 "$BIN" train-nano --device wgpu --steps ${TRAIN_STEPS:-30} --checkpoint-every 0 \
  --out /tmp/nano-gpu --datasets /tmp/nano-gpu-data --work /tmp/nano-work --force \
  2> "$out/train-nano-wgpu.log" || { tail -30 "$out/train-nano-wgpu.log"; }
cp /tmp/nano-gpu/training.json "$out/train-nano-wgpu.json" 2>/dev/null && \
  python3 -c "import json; d=json.load(open('$out/train-nano-wgpu.json')); s=d['train']; print('train-nano wgpu:', s['steps'], 'steps in', round(d['wall_seconds'],1), 's =', round(s['steps']*s['batch_size']*s['seq_len']/d['wall_seconds']), 'tok/s; final loss', d['final_lm_loss'], '; device', d['device'])"
dir=/tmp/synth-20b
"$BIN" synth --preset 20b --out "$dir" --force 2> "$out/synth.log" || { tail -20 "$out/synth.log"; exit 1; }
head -${SAMPLES:-8} datasets/nano/calibration/diverse.jsonl > /tmp/sample.jsonl
timeout 400 "$BIN" bench trace --model "$dir" --device wgpu --experts packed --data /tmp/sample.jsonl \
  --batch-size ${SAMPLES:-8} > "$out/bench-trace-20b.json" 2> "$out/bench-trace-20b.log" || tail -20 "$out/bench-trace-20b.log"
cat "$out/bench-trace-20b.json"
