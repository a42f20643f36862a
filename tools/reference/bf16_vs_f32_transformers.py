"""transformers' own bf16 rounding: the largest change of a log-probability when a checkpoint
runs in bfloat16 instead of float32 (CPU, eager), on the text tools/gpu/compare_devices.py scores.
The yardstick for the workbench's bf16 GPU path.

A second figure rounds only what the workbench's default GPU path rounds outside the experts
(`--weights bf16`): the weights of the attention projections, the embedding and lm_head, and the
rows going into those products (the tensor-core GEMM's inputs); everything else, the experts
included, stays f32. Usage: [TEXT=...] [REPEAT=N] bf16_vs_f32_transformers.py [MODEL_DIR]"""
import json, os, sys

import torch
from compare_text import compare_text
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
d = sys.argv[1] if len(sys.argv) > 1 else "models/oss-nano"
tok = PreTrainedTokenizerFast(tokenizer_file=f"{d}/tokenizer.json")
text = compare_text()  # as tools/gpu/compare_devices.py scores it (TEXT, REPEAT=N)
ids = torch.tensor([tok(text)["input_ids"]])
ROUNDED = ("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")


def load():
    """The checkpoint in float32; MXFP4 experts decoded."""
    from transformers import Mxfp4Config
    quantized = "quantization_config" in json.load(open(f"{d}/config.json"))
    extra = {"quantization_config": Mxfp4Config(dequantize=True)} if quantized else {}
    return AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", **extra).float().eval()


def bf16(t):
    return t.to(torch.bfloat16).float()


def workbench_rounding(m):
    """Rounds what `--weights bf16` rounds, in place."""
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(bf16(m.model.embed_tokens.weight))
        for name, module in m.named_modules():
            if name.split(".")[-1] in ROUNDED:
                module.weight.copy_(bf16(module.weight))
                module.register_forward_pre_hook(lambda _, args: (bf16(args[0]),) + args[1:])
    return m


def lp(m):
    with torch.no_grad():
        logits = m(ids).logits.float()
    l = torch.log_softmax(logits[0, :-1], -1)
    return l.gather(-1, ids[0, 1:, None])[:, 0]


a = lp(load())
b = lp(load().to(torch.bfloat16))
c = lp(workbench_rounding(load()))
print(json.dumps({"model": d, "tokens": int(ids.shape[1]),
                  "max_abs_bf16_vs_f32": float((a - b).abs().max()), "mean_abs": float((a - b).abs().mean()),
                  "max_abs_workbench_rounding_vs_f32": float((a - c).abs().max()),
                  "mean_abs_workbench_rounding": float((a - c).abs().mean())}))
