#!/usr/bin/env python3
"""Rounds the weights the GPU's default path keeps in bf16 (attention projections, embedding,
lm_head) to bf16 values, in place, in a copy of an f32 checkpoint: the CPU's log-probabilities
on the copy then show what that rounding alone moves, without a GPU. Plain Python, no numpy.

    cp -r tools/reference/out/tiny-dense /tmp/td
    python3 tools/reference/round_weights_bf16.py /tmp/td/model.safetensors
    gpt-oss-lite score --model /tmp/td --device cpu --json --text "..."   # against the original

Add `--moe grouped-reference-bf16` to the score to round the MoE's rows as the GPU's grouped
path does too (tiny-dense: 0.039 with the weights rounded, 0.048 with both; thirty-third round).
"""
import array
import json
import re
import struct
import sys

KEPT_IN_BF16 = re.compile(r"(self_attn\.[qkvo]_proj\.weight|embed_tokens\.weight|lm_head\.weight)$")


def round_to_bf16(bits: int) -> int:
    """An f32's bits rounded to the nearest bf16 (ties to even), as f32 bits."""
    return (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000


def main() -> None:
    path = sys.argv[1]
    data = bytearray(open(path, "rb").read())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    rounded = 0
    for name, tensor in header.items():
        if name == "__metadata__" or not KEPT_IN_BF16.search(name):
            continue
        if tensor["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {tensor['dtype']}, expected F32")
        start, end = (base + offset for offset in tensor["data_offsets"])
        values = array.array("I")
        values.frombytes(bytes(data[start:end]))
        for i, bits in enumerate(values):
            values[i] = round_to_bf16(bits)
        data[start:end] = values.tobytes()
        rounded += 1
    open(path, "wb").write(data)
    print(f"{path}: {rounded} tensors rounded to bf16 values")


if __name__ == "__main__":
    main()
