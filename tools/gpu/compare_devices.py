#!/usr/bin/env python3
"""Runs `score --json` and `generate --json` on a model with --device cpu and --device wgpu and
prints the largest log-probability difference and whether greedy tokens agree."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from compare_text import compare_text  # noqa: E402

binary, model = sys.argv[1], sys.argv[2]
# Extra arguments for the GPU runs only (e.g. --moe grouped).
gpu_extra = sys.argv[3:]
# Extra arguments for the CPU runs, from the environment (e.g. "--moe grouped-reference-bf16").
cpu_extra = os.environ.get("CPU_EXTRA", "").split()
# The compared text: TEXT replaces it, REPEAT=N takes it N times over.
text = compare_text()


def run(*args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"FAILED: {' '.join(args)}\n{out.stderr[-3000:]}")
        sys.exit(1)
    return json.loads(out.stdout)


worst = 0.0
for dev in ["wgpu"]:
    cpu = run("score", "--model", model, "--text", text, "--json", "--device", "cpu", *cpu_extra)
    gpu = run("score", "--model", model, "--text", text, "--json", "--device", dev, *gpu_extra)
    assert cpu["token_ids"] == gpu["token_ids"]
    diff = max(abs(a - b) for a, b in zip(cpu["logprobs"], gpu["logprobs"]))
    worst = max(worst, diff)
    g_cpu = run("generate", "--model", model, "--prompt", "2 + 2 =", "--max-tokens", "24", "--json", "--device", "cpu", *cpu_extra)
    g_gpu = run("generate", "--model", model, "--prompt", "2 + 2 =", "--max-tokens", "24", "--json", "--device", dev, *gpu_extra)
    same = g_cpu["token_ids"] == g_gpu["token_ids"]
    print(f"{model} cpu {' '.join(cpu_extra)} / gpu {' '.join(gpu_extra)}: {len(cpu['logprobs'])} log-probs, max |cpu - {dev}| = {diff:.3e}; greedy 24 tokens identical: {same}")
    if not same:
        print("  cpu:", g_cpu["token_ids"])
        print("  gpu:", g_gpu["token_ids"])
