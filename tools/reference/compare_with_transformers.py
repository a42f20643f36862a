#!/usr/bin/env python3
"""Loads a checkpoint folder in Hugging Face transformers (float32, eager attention, CPU) and
compares its log-probabilities with `gpt-oss-lite score --json` on the same texts.

    tools/reference/.venv/bin/python tools/reference/compare_with_transformers.py \
        --model models/oss-nano --bin target/debug/gpt-oss-lite

Works for any checkpoint the workbench writes: oss-nano, synth outputs, pruned variants.

For every text it prints three distances (max over tokens):
  f32: |transformers float32 - workbench|        the comparison the project asks for (<= 1e-4)
  f64: |transformers float64 - workbench|        the workbench's own rounding error
  hf:  |transformers float64 - transformers f32|  transformers' own rounding error

A text passes when f32 <= --tolerance (default 1e-4), or, on long texts through a trained model
where two float32 implementations drift apart by rounding alone, when the workbench is at least
as close to the float64 result as transformers' own float32 run is (f64 <= hf). Exits non-zero
when any text fails.
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
    p.add_argument("--save", help="also write the token ids and both transformers results as JSON"
                   " (a fixture the Rust tests compare against without Python)")
    args = p.parse_args()
    model32 = load(args.model)
    model64 = load(args.model).double()
    failed = 0
    saved = []
    for text in args.text or DEFAULT_TEXTS:
        ids, ours = workbench_logprobs(args.bin, args.model, text)
        ours = torch.tensor(ours, dtype=torch.float64)
        hf32 = transformers_logprobs(model32, ids)
        hf64 = transformers_logprobs(model64, ids)
        f32 = (hf32 - ours).abs().max().item()
        f64 = (hf64 - ours).abs().max().item()
        hf = (hf64 - hf32).abs().max().item()
        ok = f32 <= args.tolerance or f64 <= hf
        failed += not ok
        saved.append(dict(token_ids=ids, transformers_f32=hf32.tolist(),
                          transformers_f64=hf64.tolist()))
        verdict = "ok" if f32 <= args.tolerance else ("ok (rounding)" if ok else "FAIL")
        print(f"{len(ids):4d} tokens: f32 {f32:.2e}  f64 {f64:.2e}  hf {hf:.2e}  {verdict}")
    if args.save:
        with open(args.save, "w") as f:
            json.dump(dict(model=args.model, texts=saved), f)
            f.write("\n")
    print(f"{failed} text(s) failed (tolerance {args.tolerance:g})")
    sys.exit(1 if failed else 0)


def transformers_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


if __name__ == "__main__":
    main()
