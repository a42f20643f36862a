"""Holds GPU memory with torch so that the card looks like a smaller one to the next process.

    python3 tools/gpu/hold_memory.py CARD_MIB READY_FILE

Allocates on GPU 0 until its free memory (cudaMemGetInfo) is what an idle card of CARD_MIB would
have free (CARD_MIB less what this card uses before the holder starts, as nvidia-smi reports
it), writes the figures to READY_FILE, and sleeps until killed. An H100 80GB reports 81,559 MiB
(nvidia-smi, 2026-11-26), so `81559` makes an H200 hold what an H100 could.
"""
import subprocess
import sys
import time

import torch

MIB = 1 << 20


def used_mib_before() -> int:
    out = subprocess.run(
        ["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.strip())


def main() -> None:
    card_mib, ready = int(sys.argv[1]), sys.argv[2]
    idle_used = used_mib_before()
    target_free = (card_mib - idle_used) * MIB
    held = []
    while True:
        free, total = torch.cuda.mem_get_info(0)
        excess = free - target_free
        if excess < MIB:
            break
        held.append(torch.empty(excess, dtype=torch.uint8, device="cuda:0"))
    free, total = torch.cuda.mem_get_info(0)
    if free > target_free + 64 * MIB:
        sys.exit(f"hold_memory: {free // MIB} MiB still free, wanted {target_free // MIB}")
    if free < target_free - 64 * MIB:
        print(f"hold_memory: this card has {free // MIB} MiB free, less than a {card_mib} MiB "
              "card would; nothing held", file=sys.stderr)
    with open(ready, "w") as f:
        f.write(f"card {total // MIB} MiB, held {sum(t.numel() for t in held) // MIB} MiB, "
                f"free {free // MIB} MiB (an idle {card_mib} MiB card with {idle_used} MiB used)\n")
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
