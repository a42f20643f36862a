#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: where the default GPU path's log-probabilities
# part from the CPU's, for MODEL (default: the tiny-dense fixture). compare_devices.py on the
# default path (bf16 weights and the grouped MoE), with each of the two switched back to the
# reference alone, and on the exact path. The thirty-third round saw tiny-dense at 1.022 on the
# default path and 3.3e-6 on the exact one, where rounding the weights to bf16 and the MoE's
# rows as the GPU does gives 0.048 on the CPU (tools/reference/round_weights_bf16.py).
set -uo pipefail
model=${1:-tools/reference/out/tiny-dense}
compare() { python3 "$(dirname "$0")/compare_devices.py" "$BIN" "$model" "$@" 2>&1 | grep max; }
compare
compare --moe per-expert
compare --weights f32
compare --moe per-expert --weights f32
