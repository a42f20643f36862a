#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: where the default GPU path's log-probabilities
# part from the CPU's, for MODEL (default: the tiny-dense fixture). compare_devices.py on the
# default path (bf16 weights and the grouped MoE), with each of the two switched back to the
# reference alone, and on the exact path. The thirty-third round saw tiny-dense at 1.022 on the
# default path and 3.3e-6 on the exact one, where rounding the weights to bf16 and the MoE's
# rows as the GPU does gives 0.048 on the CPU (tools/reference/round_weights_bf16.py). Run in the
# thirty-fourth round: `Direct` was right (6.5e-8); burn's f32 -> bf16 cast truncated on the GPU,
# and with every bf16 rounded to nearest (gpt_oss_kernels::bf16_nearest) tiny-dense is at 0.058.
set -uo pipefail
model=${1:-tools/reference/out/tiny-dense}
compare() { python3 "$(dirname "$0")/compare_devices.py" "$BIN" "$model" "$@" 2>&1 | grep max; }
compare
compare --moe per-expert
compare --weights f32
compare --moe per-expert --weights f32
# The dense GEMM at tiny-dense's shapes (65 tokens; hidden 48; q 64, k and v 32, vocab 320) and
# tiny-mxfp4's (hidden 64; vocab 384): rows that are not whole fragments (65) and K steps that
# are not whole steps of 32 (48) leave the model's products only the `Direct` kernel
# (`coopmat_gemm::launched_tiling`), which no other fixture takes. Each line says which kernel
# launched and its error against burn's f32 product of the same bf16 inputs.
"$BIN" bench matmul --device wgpu --kernel coopmat --dtypes bf16 --bias --warmup 0 --iters 1 \
  --shapes 65x48x64,65x48x32,65x64x48,65x48x320,65x64x64,65x64x384 2> /dev/null \
  | grep -o '"k":[0-9]*\|"launched":"[^"]*scheme: [A-Za-z]*\|"m":[0-9]*\|"n":[0-9]*\|"relative_error_vs_burn_f32":[^,]*' \
  | paste -sd' ' | sed 's/"k":/\nk=/g'
