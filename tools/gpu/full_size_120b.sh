#!/usr/bin/env bash
# On a GPU machine with room for it (nvidia-h200-x2: 256 GB of memory, 128 GB of disk; or one
# H200 with 128 GB, whose /dev/shm this remounts at 100 GB when it has less room): a random
# gpt-oss-120b in the release layout (36 layers x 128 experts, about 65 GB), loaded on one GPU
# with its MXFP4 experts packed, scored at BATCH x SEQ with routing recorded and not, decoded at
# batch 1 and 32, and the table with the roofline. transformers cannot hold 120b in bf16 on one
# card (about 234 GB), so there is no multiple of it. The checkpoint goes to /dev/shm when that
# has room (written at memory speed), else /tmp; DIR chooses.
set -uo pipefail
out=${OUT:-/tmp/out}
if [ -z "${DIR:-}" ]; then
  free_shm=$(df --output=avail -B1 /dev/shm | tail -1)
  available=$(free -b | awk '/^Mem:/ {print $7}')
  # The one-GPU kind mounts /dev/shm at half its 128 GB (thirty-second round, call 13).
  if [ "$free_shm" -le 80000000000 ] && [ "$available" -gt 110000000000 ] \
    && mount -o remount,size=100G /dev/shm; then
    free_shm=$(df --output=avail -B1 /dev/shm | tail -1)
  fi
  DIR=/tmp/synth-120b
  [ "$free_shm" -gt 80000000000 ] && DIR=/dev/shm/synth-120b
fi
if [ ! -f "$DIR/config.json" ]; then
  /usr/bin/time -v "$BIN" synth --preset 120b --out "$DIR" --force 2> "$out/synth-120b.log" \
    || { tail -20 "$out/synth-120b.log"; exit 1; }
  grep -E "Elapsed|Maximum resident" "$out/synth-120b.log"
fi
du -sb "$DIR"
if [ -n "${CARD_MIB:-}" ]; then
  rm -f /tmp/held
  python3 "$(dirname "$0")/hold_memory.py" "$CARD_MIB" /tmp/held & holder=$!
  for _ in $(seq 120); do
    [ -f /tmp/held ] || ! kill -0 "$holder" 2> /dev/null && break
    sleep 0.5
  done
  [ -f /tmp/held ] || { echo "hold_memory.py did not get ready"; exit 1; }
  cat /tmp/held
fi
nvidia-smi -i 0 --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 50 \
  > "$out/gpu-mem-120b.log" &
smi=$!
timeout "${LIMIT:-400}" "$BIN" bench model --model "$DIR" --device wgpu --experts packed \
  --batch "${BATCH:-8}" --seq "${SEQ:-2048}" --iters "${ITERS:-1}" --decode-batches 1,32 \
  --new-tokens "${NEW_TOKENS:-32}" > "$out/model-120b.jsonl" 2> "$out/model-120b.log" \
  || { echo "bench failed:"; tail -5 "$out/model-120b.log" | cut -c1-300; }
kill $smi
[ -n "${holder:-}" ] && kill "$holder"
grep -v '^\s*$' "$out/model-120b.jsonl" | cut -c1-400
"$BIN" bench compare --ours "$out/model-120b.jsonl" --config crates/model/src/presets/gpt-oss-120b.json \
  $(tools/gpu/card_rates.sh)
python3 tools/gpu/memory_phases.py "$out/gpu-mem-120b.log" "$out/model-120b.log" "120b (GPU 0)"
