#!/usr/bin/env python3
"""Builds small random gpt-oss checkpoints in the Hugging Face release layout and records what
Hugging Face transformers (float32, eager attention, CPU) computes on them.

Outputs, under tools/reference/out/<fixture>/:
  config.json, tokenizer.json, model*.safetensors (+ index when sharded)   the checkpoint
  reference.json                                                          token ids, greedy runs
  reference.safetensors                                                   log-softmax rows [T, V]

The Rust tests (crates/model/tests/reference.rs) compare the workbench against these files.
Regenerate with `tools/reference/setup-venv.sh && tools/reference/.venv/bin/python
tools/reference/make_fixtures.py`; the outputs are deterministic for a given torch version.

Two fixtures cover the two config layouts and the two expert formats:
  tiny-mxfp4  real hub layout: `rope_scaling` + top-level `rope_theta`, `truncate: false`,
              explicit `layer_types`, BF16 tensors, MXFP4 experts, two shards with an index.
  tiny-dense  newer layout: `rope_parameters` without `truncate` (transformers then rounds the
              YaRN range), no `layer_types`, `num_experts` alias, F32 tensors, dense experts
              [E, in, out], one file, head_dim not equal to hidden/heads.
Weights are drawn far from zero (biases, sinks, router biases) so that every term matters, and
expert scales are chosen so that the SwiGLU clamp is reached.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

FIXTURES = {
    "tiny-mxfp4": dict(
        seed=1,
        experts="mxfp4",
        dtype=torch.bfloat16,
        shards=2,
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=8,
            num_experts_per_tok=4,
            experts_per_token=4,
            vocab_size=384,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * 2,
            rope_theta=150000,
            rope_scaling=dict(
                rope_type="yarn",
                factor=32.0,
                beta_fast=32.0,
                beta_slow=1.0,
                original_max_position_embeddings=4096,
                truncate=False,
            ),
            quantization_config=dict(
                quant_method="mxfp4",
                modules_to_not_convert=[
                    "model.layers.*.self_attn",
                    "model.layers.*.mlp.router",
                    "model.embed_tokens",
                    "lm_head",
                ],
            ),
        ),
    ),
    "tiny-dense": dict(
        seed=2,
        experts="dense",
        dtype=torch.float32,
        shards=1,
        config=dict(
            hidden_size=48,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=6,
            num_experts_per_tok=2,
            vocab_size=320,
            sliding_window=6,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=150000.0,
                factor=32.0,
                beta_fast=32.0,
                beta_slow=1.0,
                original_max_position_embeddings=4096,
            ),
        ),
    ),
}

COMMON_CONFIG = dict(
    architectures=["GptOssForCausalLM"],
    model_type="gpt_oss",
    attention_bias=True,
    attention_dropout=0.0,
    hidden_act="silu",
    initializer_range=0.02,
    max_position_embeddings=131072,
    rms_norm_eps=1e-05,
    swiglu_limit=7.0,
    tie_word_embeddings=False,
    use_cache=True,
    eos_token_id=2,
    pad_token_id=0,
    router_aux_loss_coef=0.9,
    output_router_logits=False,
)

# Sequences longer than the sliding window; lengths differ so batched tests need padding.
SEQUENCE_LENGTHS = [5, 19, 33]
PROMPT_LENGTHS = [3, 11]
NEW_TOKENS = 16

FP4_VALUES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]

TOKENIZER_CORPUS = [
    "The capital of France is Paris.",
    "2 + 2 = 4",
    "7 * 8 = 56",
    "Hello world, this is a tiny tokenizer for reference fixtures.",
    "def add(a, b): return a + b",
    "one two three four five six seven eight nine ten",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftext|>", "<|return|>", "<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|call|>"]


def build_tokenizer(path: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 20, trainer=trainer)
    assert tok.get_vocab_size() <= vocab_size
    tok.save(str(path))


def normal(gen, shape, std, mean=0.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean


def random_mxfp4(gen, experts, rows, cols, scale_lo, scale_hi):
    """Random MXFP4 blocks [E, rows, cols/32, 16] and scales [E, rows, cols/32]."""
    groups = cols // 32
    blocks = torch.randint(0, 256, (experts, rows, groups, 16), generator=gen, dtype=torch.int64).to(torch.uint8)
    scales = torch.randint(scale_lo, scale_hi + 1, (experts, rows, groups), generator=gen, dtype=torch.int64).to(torch.uint8)
    return blocks, scales


def decode_mxfp4(blocks, scales):
    """Spec section 3: [E, R, G, 16] bytes + [E, R, G] scales -> [E, R, G*32] (out, in) in float64."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float64)
    lo = lut[(blocks & 0x0F).long()]
    hi = lut[(blocks >> 4).long()]
    vals = torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:-1], 32)
    vals = vals * torch.pow(2.0, scales.double() - 127.0)[..., None]
    return vals.reshape(blocks.shape[0], blocks.shape[1], -1)


def build_state_dict(spec):
    cfg = spec["config"]
    gen = torch.Generator().manual_seed(spec["seed"])
    H = cfg["hidden_size"]
    I = cfg["intermediate_size"]
    L = cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    d = cfg["head_dim"]
    E = cfg.get("num_local_experts", cfg.get("num_experts"))
    V = cfg["vocab_size"]
    sd = {}
    sd["model.embed_tokens.weight"] = normal(gen, (V, H), 1.0)
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = normal(gen, (H,), 0.2, 1.0)
        sd[p + "post_attention_layernorm.weight"] = normal(gen, (H,), 0.2, 1.0)
        sd[p + "self_attn.q_proj.weight"] = normal(gen, (nh * d, H), 1.0 / math.sqrt(H))
        sd[p + "self_attn.q_proj.bias"] = normal(gen, (nh * d,), 0.5)
        sd[p + "self_attn.k_proj.weight"] = normal(gen, (nkv * d, H), 1.0 / math.sqrt(H))
        sd[p + "self_attn.k_proj.bias"] = normal(gen, (nkv * d,), 0.5)
        sd[p + "self_attn.v_proj.weight"] = normal(gen, (nkv * d, H), 1.0 / math.sqrt(H))
        sd[p + "self_attn.v_proj.bias"] = normal(gen, (nkv * d,), 0.5)
        sd[p + "self_attn.o_proj.weight"] = normal(gen, (H, nh * d), 1.0 / math.sqrt(nh * d))
        sd[p + "self_attn.o_proj.bias"] = normal(gen, (H,), 0.5)
        sd[p + "self_attn.sinks"] = normal(gen, (nh,), 1.5)
        sd[p + "mlp.router.weight"] = normal(gen, (E, H), 1.0 / math.sqrt(H))
        sd[p + "mlp.router.bias"] = normal(gen, (E,), 1.0)
        sd[p + "mlp.experts.gate_up_proj_bias"] = normal(gen, (E, 2 * I), 1.0)
        sd[p + "mlp.experts.down_proj_bias"] = normal(gen, (E, H), 0.5)
        if spec["experts"] == "mxfp4":
            # Scales chosen so that gate/up pre-activations reach the +-7 clamp now and then.
            gu_b, gu_s = random_mxfp4(gen, E, 2 * I, H, 123, 125)
            dn_b, dn_s = random_mxfp4(gen, E, H, I, 119, 121)
            sd[p + "mlp.experts.gate_up_proj_blocks"] = gu_b
            sd[p + "mlp.experts.gate_up_proj_scales"] = gu_s
            sd[p + "mlp.experts.down_proj_blocks"] = dn_b
            sd[p + "mlp.experts.down_proj_scales"] = dn_s
        else:
            # transformers' dense layout is [E, in, out].
            sd[p + "mlp.experts.gate_up_proj"] = normal(gen, (E, H, 2 * I), 3.0 / math.sqrt(H))
            sd[p + "mlp.experts.down_proj"] = normal(gen, (E, I, H), 1.0 / math.sqrt(I))
    sd["model.norm.weight"] = normal(gen, (H,), 0.2, 1.0)
    sd["lm_head.weight"] = normal(gen, (V, H), 2.0 / math.sqrt(H))
    out = {}
    for name, t in sd.items():
        out[name] = t if t.dtype == torch.uint8 else t.to(spec["dtype"]).contiguous()
    return out


def write_checkpoint(folder: Path, sd, shards: int):
    names = list(sd.keys())
    if shards == 1:
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    # Deliberately not in layer order: the loader must follow the index.
    per = math.ceil(len(names) / shards)
    order = sorted(names)
    weight_map = {}
    total = 0
    for s in range(shards):
        part = order[s * per : (s + 1) * per]
        fname = f"model-{s:05d}-of-{shards:05d}.safetensors"
        save_file({n: sd[n] for n in part}, str(folder / fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += sd[n].numel() * sd[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_transformers_model(folder: Path, spec):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")
    if spec["experts"] == "mxfp4":
        from transformers import Mxfp4Config

        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    model = model.float().eval()
    return model


def check_dequantized_experts(model, sd, spec):
    """Guards the fixture itself: transformers' experts must equal our own decode of the bytes."""
    if spec["experts"] != "mxfp4":
        return
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}.mlp.experts."
        ours = decode_mxfp4(sd[p + "gate_up_proj_blocks"], sd[p + "gate_up_proj_scales"]).transpose(1, 2)
        theirs = layer.mlp.experts.gate_up_proj.detach().double()
        assert torch.equal(ours, theirs), f"layer {i}: transformers decoded gate_up differently"


def main():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import transformers

    only = set(sys.argv[1:])
    for name, spec in FIXTURES.items():
        if only and name not in only:
            continue
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*"):
            f.unlink()
        cfg = dict(COMMON_CONFIG)
        cfg.update(spec["config"])
        cfg["transformers_version"] = transformers.__version__
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        build_tokenizer(folder / "tokenizer.json", min(cfg["vocab_size"], 300))
        sd = build_state_dict(spec)
        write_checkpoint(folder, sd, spec["shards"])

        model = load_transformers_model(folder, spec)
        check_dequantized_experts(model, sd, spec)

        gen = torch.Generator().manual_seed(100 + spec["seed"])
        V = cfg["vocab_size"]
        sequences = [torch.randint(0, V, (n,), generator=gen).tolist() for n in SEQUENCE_LENGTHS]
        logprobs = {}
        with torch.no_grad():
            for i, seq in enumerate(sequences):
                logits = model(torch.tensor([seq])).logits[0].double()
                logprobs[f"seq{i}.logprobs"] = torch.log_softmax(logits, dim=-1).float().contiguous()

        greedy = []
        min_margin = float("inf")
        with torch.no_grad():
            for i, n in enumerate(PROMPT_LENGTHS):
                prompt = sequences[-1][:n]
                out = model.generate(
                    torch.tensor([prompt]),
                    max_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
                new = out.sequences[0, len(prompt):].tolist()
                for step_logits in out.logits:
                    top2 = torch.topk(step_logits[0].double(), 2).values
                    min_margin = min(min_margin, float(top2[0] - top2[1]))
                greedy.append({"prompt": prompt, "continuation": new})
        # A near-tie would make the exact greedy comparison depend on rounding, not on correctness.
        assert min_margin > 1e-3, f"{name}: greedy top-2 margin {min_margin} too small; change the seed"

        save_file(logprobs, str(folder / "reference.safetensors"))
        ref = {
            "generated_by": "tools/reference/make_fixtures.py",
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "sequences": sequences,
            "greedy": greedy,
            "greedy_min_top2_margin": min_margin,
        }
        (folder / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
        size = sum(f.stat().st_size for f in folder.glob("*"))
        print(f"{name}: {size / 1024:.0f} KiB, greedy min top-2 margin {min_margin:.4f}")


if __name__ == "__main__":
    main()
