#!/usr/bin/env bash
# On the GPU machine: greedy decode at batch 1 and 32 on a random 20b, gpt-oss-lite then
# transformers (eager, bf16, tools/gpu/torch_baseline.py) in the same call. Scoring runs at
# BATCH x SEQ (default 1 x 16, a warm-up size: the short run for decode changes; BATCH=8
# SEQ=2048 ITERS=2 gives the scoring figure too); NEW_TOKENS per decode (default 64).
set -uo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
[ -f "$dir/config.json" ] || timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
timeout 400 "$BIN" bench model --model "$dir" --device wgpu --experts packed \
  --batch ${BATCH:-1} --seq ${SEQ:-16} --iters ${ITERS:-1} --decode-batches 1,32 --new-tokens ${NEW_TOKENS:-64} \
  > "$out/decode-ours.jsonl" 2> "$out/decode-ours.log" || { echo "bench failed:"; tail -5 "$out/decode-ours.log" | cut -c1-300; }
grep decode "$out/decode-ours.jsonl"
timeout 500 python3 tools/gpu/torch_baseline.py model --config crates/model/src/presets/gpt-oss-20b.json \
  --batch ${BATCH:-1} --seq ${SEQ:-16} --iters ${ITERS:-1} --new-tokens ${NEW_TOKENS:-64} > "$out/decode-torch.jsonl" 2> "$out/decode-torch.log" \
  || { echo "torch baseline failed:"; tail -5 "$out/decode-torch.log" | cut -c1-300; }
grep 'torch_model\|torch_decode' "$out/decode-torch.jsonl"
"$BIN" bench compare --ours "$out/decode-ours.jsonl" --transformers "$out/decode-torch.jsonl" \
  --config crates/model/src/presets/gpt-oss-20b.json $(tools/gpu/card_rates.sh)
