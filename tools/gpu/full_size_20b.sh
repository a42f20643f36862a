#!/usr/bin/env bash
# Writes a random gpt-oss-20b in the release layout, loads it on the GPU with MXFP4 experts kept
# packed, generates, and records load time and peak GPU memory (nvidia-smi, sampled every 100 ms).
set -euo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
/usr/bin/time -v "$BIN" synth --preset 20b --out "$dir" --force 2> "$out/synth.log" || { tail -20 "$out/synth.log"; exit 1; }
grep -E "wrote|Elapsed|Maximum resident" "$out/synth.log"
du -sb "$dir"
"$BIN" inspect --model "$dir" --json > "$out/inspect-20b.json"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$out/gpu-mem-20b.log" &
smi=$!
base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
/usr/bin/time -v "$BIN" generate --model "$dir" --device wgpu --experts packed \
  --prompt "The capital of France is" --max-tokens ${TOKENS:-8} --json > "$out/generate-20b.json" 2> "$out/generate-20b.log"
kill $smi
cat "$out/generate-20b.json"; echo
grep -E "loaded|new tokens|Maximum resident|Elapsed" "$out/generate-20b.log"
peak=$(sort -n "$out/gpu-mem-20b.log" | tail -1)
echo "GPU memory before: ${base} MiB; peak during load+generate: ${peak} MiB"
# A prompt longer than the 128-key sliding window, scored in one pass.
text=$(python3 -c "print(' '.join(['The capital of France is Paris and 2 + 2 = 4.'] * 30))")
/usr/bin/time -v "$BIN" score --model "$dir" --device wgpu --experts packed --text "$text" --json > "$out/score-20b.json" 2> "$out/score-20b.log"
python3 -c "import json; d=json.load(open('$out/score-20b.json')); print('scored', len(d['token_ids']), 'tokens; mean logprob', sum(d['logprobs'])/len(d['logprobs']))"
grep -E "loaded|Elapsed" "$out/score-20b.log"
