#!/usr/bin/env bash
# On the GPU machine: greedy decode at batch 1 and 32 on a random 20b, gpt-oss-lite then
# transformers (eager, bf16, tools/gpu/torch_baseline.py) in the same call. Scoring is left
# out (tools/gpu/fast_path_check.sh has it): this is the short run for decode changes.
set -uo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
[ -f "$dir/config.json" ] || timeout 120 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
timeout 150 "$BIN" bench model --model "$dir" --device wgpu --experts packed \
  --batch 1 --seq 16 --iters 1 --decode-batches 1,32 --new-tokens ${NEW_TOKENS:-64} \
  > "$out/decode-ours.jsonl" 2> "$out/decode-ours.log" || { echo "bench failed:"; tail -5 "$out/decode-ours.log" | cut -c1-300; }
grep decode "$out/decode-ours.jsonl"
timeout 240 python3 tools/gpu/torch_baseline.py model --config crates/model/src/presets/gpt-oss-20b.json \
  --batch 1 --seq 16 --iters 1 --new-tokens ${NEW_TOKENS:-64} > "$out/decode-torch.jsonl" 2> "$out/decode-torch.log" \
  || { echo "torch baseline failed:"; tail -5 "$out/decode-torch.log" | cut -c1-300; }
grep 'torch_model\|torch_decode' "$out/decode-torch.jsonl"
"$BIN" bench compare --ours "$out/decode-ours.jsonl" --transformers "$out/decode-torch.jsonl" \
  --config crates/model/src/presets/gpt-oss-20b.json
