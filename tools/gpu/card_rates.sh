#!/usr/bin/env bash
# Prints `bench compare`'s rate arguments for the machine's first GPU: the dense bf16 rate and
# the memory bandwidth from NVIDIA's data sheets (SXM parts). Both H100 and H200 do 989 TF/s of
# dense bf16; the H200's HBM3e gives 4.8 TB/s against the H100's 3.35.
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
  *H200*) echo "--bandwidth-tb-s 4.8 --bf16-tflop-s 989" ;;
  *H100*) echo "--bandwidth-tb-s 3.35 --bf16-tflop-s 989" ;;
  *) echo "card_rates.sh: no rates known for '$name'; bench compare's defaults (H100 SXM) apply" >&2 ;;
esac
