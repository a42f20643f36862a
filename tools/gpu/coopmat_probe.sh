#!/usr/bin/env bash
# On the GPU machine: our cooperative-matrix GEMM per tiling vs burn's matmul, bf16.
set -uo pipefail
out=${OUT:-/tmp/out}
timeout 240 "$BIN" bench matmul --device wgpu --kernel coopmat --dtypes bf16 \
  --shapes ${SHAPES:-4096,8192,16384x2880x5760} \
  --tilings ${TILINGS:-128x128x32/256,128x256x32/256,256x128x32/256,64x128x32/128,128x128x64/256} \
  > "$out/coopmat.jsonl" 2> "$out/coopmat.log"
echo "coopmat exit $?"; tail -5 "$out/coopmat.log" | cut -c1-400
python3 -c "
import json,sys
for l in open('$out/coopmat.jsonl'):
    r=json.loads(l); print(r['tiling'], r['m'], r['k'], r['n'], 'TF/s %.1f'%r['tflops'], 'relerr', r['relative_error_vs_burn_f32'])
"
