#!/usr/bin/env python3
"""Loads a checkpoint folder in Hugging Face transformers (float32, eager attention, CPU) and
compares its log-probabilities with `gpt-oss-lite score --json` on the same texts.

    tools/reference/.venv/bin/python tools/reference/compare_with_transformers.py \
        --model models/oss-nano --bin target/debug/gpt-oss-lite

Exits non-zero when any log-probability differs by more than --tolerance (default 1e-4).
Works for any checkpoint the workbench writes: oss-nano, synth outputs, pruned variants.
"""

import argparse
import json
import subprocess
import sys

import torch

DEFAULT_TEXTS = [
    "2 + 2 = 4\n7 * 8 = 56\n3 - 7 = -4",
    "The capital of France is Paris.\nThe capital of Japan is Tokyo.",
    "def mul(a, b): return a * b",
    # Longer than any sliding window the workbench's models use.
    "\n".join(f"{a} + {b} = {a + b}" for a in range(10) for b in range(0, 10, 3)),
]


def workbench_logprobs(binary, model, text):
    out = subprocess.run(
        [binary, "score", "--model", model, "--text", text, "--json", "--device", "cpu"],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"gpt-oss-lite failed:\n{out.stderr}")
    d = json.loads(out.stdout)
    return d["token_ids"], d["logprobs"]


def load(model_dir):
    from transformers import AutoModelForCausalLM

    config = json.load(open(f"{model_dir}/config.json"))
    kwargs = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    if config.get("quantization_config", {}).get("quant_method") == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).float().eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--bin", required=True)
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--text", action="append", help="texts to score (default: a built-in set)")
    args = p.parse_args()
    model = load(args.model)
    worst = 0.0
    for text in args.text or DEFAULT_TEXTS:
        ids, ours = workbench_logprobs(args.bin, args.model, text)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        theirs = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        diff = (theirs - torch.tensor(ours, dtype=torch.float64)).abs().max().item()
        worst = max(worst, diff)
        print(f"{len(ids):4d} tokens: max |transformers - workbench| = {diff:.2e}")
    print(f"worst {worst:.2e} (tolerance {args.tolerance:g})")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
