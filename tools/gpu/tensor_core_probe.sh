#!/usr/bin/env bash
# On the GPU machine: does burn's wgpu/Vulkan matmul reach the tensor cores? Logs what cubecl
# registers (cooperative-matrix sizes) and what autotune picks, times burn's matmul per dtype,
# and times torch on the same card in the same run.
set -uo pipefail
out=${OUT:-/tmp/out}
RUST_LOG=cubecl_wgpu=debug,cubecl_runtime=info,warn CUBECL_DEBUG_LOG="$out/cubecl.log" \
  timeout 300 "$BIN" bench matmul --device wgpu --shapes ${SHAPES:-4096,8192,16384x2880x5760} \
  --dtypes ${DTYPES:-f32,f16,bf16} > "$out/burn-matmul.jsonl" 2> "$out/burn-matmul.log"
echo "burn exit $?"
grep -i -A3 "cmma\|cube mma\|cooperative" "$out/burn-matmul.log" | head -60
cat "$out/burn-matmul.jsonl"
python3 tools/gpu/torch_baseline.py matmul --shapes ${SHAPES:-4096,8192,16384x2880x5760} \
  > "$out/torch-matmul.jsonl" 2> "$out/torch-matmul.log" || tail -5 "$out/torch-matmul.log"
cat "$out/torch-matmul.jsonl"
