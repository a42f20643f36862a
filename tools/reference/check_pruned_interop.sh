#!/usr/bin/env bash
# Issue 5's interop check: pruned checkpoints written by the workbench load in Hugging Face
# transformers and give the workbench's log-probabilities (compare_with_transformers.py's rule).
#   oss-nano pruned by `frequency` on the diverse trace to 16, 8 and 4 experts per layer;
#   the two reference fixtures pruned to random (seeded) selections.
# Also refreshes the fixture tools/reference/out/oss-nano-pruned-8-transformers.json that the
# prune crate's tests compare against without Python.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools/reference/setup-venv.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gpt-oss-lite/target}"
cargo build -p gpt-oss-lite
bin="$CARGO_TARGET_DIR/debug/gpt-oss-lite"
py=tools/reference/.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for k in 16 8 4; do
  "$bin" select --stats datasets/nano/traces/diverse --strategy frequency --experts $k --out "$work/nano-$k.json"
  "$bin" prune --model models/oss-nano --selection "$work/nano-$k.json" --out "$work/nano-$k"
  echo "== oss-nano, frequency, $k experts per layer"
  save=()
  if [ $k = 8 ]; then
    cp "$work/nano-$k.json" tools/reference/out/oss-nano-pruned-8.selection.json
    save=(--save tools/reference/out/oss-nano-pruned-8-transformers.json)
  fi
  "$py" tools/reference/compare_with_transformers.py --model "$work/nano-$k" --bin "$bin" "${save[@]}"
done

# name experts top_k layers kept
for spec in "tiny-mxfp4 8 4 4 6" "tiny-mxfp4 8 4 4 4" "tiny-dense 6 2 3 4" "tiny-dense 6 2 3 2"; do
  read -r name experts top_k layers kept <<< "$spec"
  "$py" - "$work/$name-$kept.json" "$experts" "$top_k" "$layers" "$kept" <<'PY'
import json, random, sys
path, experts, top_k, layers, kept = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(kept)
json.dump(dict(strategy="random (interop check)", parameters={"seed": kept},
               budget=dict(kind="uniform", value=kept), num_experts=experts, top_k=top_k,
               layers=[sorted(rng.sample(range(experts), kept)) for _ in range(layers)],
               stats_digest="none"), open(path, "w"))
PY
  "$bin" prune --model tools/reference/out/$name --selection "$work/$name-$kept.json" --out "$work/$name-$kept"
  echo "== $name, random, $kept experts per layer"
  "$py" tools/reference/compare_with_transformers.py --model "$work/$name-$kept" --bin "$bin"
done
