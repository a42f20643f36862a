#!/usr/bin/env python3
"""Baselines measured with torch / transformers on the GPU machine, in the same run as the
workbench's own benchmarks (issue 7). Prints one JSON object per line.

  python3 tools/gpu/torch_baseline.py matmul            # dense matmul TFLOP/s, copy bandwidth
  python3 tools/gpu/torch_baseline.py model --config crates/model/src/presets/gpt-oss-20b.json

`model` builds a random gpt-oss from the config in bfloat16 (experts dense: transformers
dequantizes MXFP4 when it has no MXFP4 kernels), eager attention, and times scoring (forward +
log-softmax + gather) of batch x seq tokens with and without router logits, and greedy decode.
"""
import argparse
import json
import time

import torch


def timed(fn, warmup=2, iters=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def matmul(args):
    for dtype_name in args.dtypes.split(","):
        dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
        for shape in args.shapes.split(","):
            sides = [int(s) for s in shape.split("x")]
            m, k, n = sides * 3 if len(sides) == 1 else sides
            a = torch.randn(m, k, device="cuda", dtype=dtype)
            b = torch.randn(k, n, device="cuda", dtype=dtype)
            s = timed(lambda: a @ b)
            print(json.dumps({"bench": "torch_matmul", "dtype": dtype_name, "m": m, "k": k, "n": n,
                              "seconds": s, "tflops": 2 * m * k * n / s / 1e12}), flush=True)
    x = torch.empty(1 << 30, device="cuda", dtype=torch.uint8).random_(0, 255)
    y = torch.empty_like(x)
    s = timed(lambda: y.copy_(x))
    print(json.dumps({"bench": "torch_copy", "bytes": 2 * x.numel(), "seconds": s,
                      "gb_per_s": 2 * x.numel() / s / 1e9}), flush=True)


def model(args):
    import transformers
    from transformers import AutoModelForCausalLM, GptOssConfig

    with open(args.config) as f:
        fields = json.load(f)
    fields.pop("quantization_config", None)
    config = GptOssConfig(**fields)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    with torch.device("cuda"):
        net = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    net.eval()
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"bench": "torch_model", "transformers": transformers.__version__,
                      "torch": torch.__version__, "params": params,
                      "weights_bytes": torch.cuda.memory_allocated(),
                      "gpu": torch.cuda.get_device_name()}), flush=True)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device="cuda")

    def score(router):
        with torch.no_grad():
            out = net(input_ids=ids, output_router_logits=router, use_cache=False)
            logits = out.logits
            total = torch.zeros((), device="cuda")
            for row in range(logits.shape[0]):
                lp = torch.log_softmax(logits[row, :-1].float(), dim=-1)
                total += lp.gather(-1, ids[row, 1:, None]).sum()
            return total

    for router in (False, True):
        torch.cuda.reset_peak_memory_stats()
        s = timed(lambda: score(router), warmup=1, iters=args.iters)
        tokens = args.batch * args.seq
        print(json.dumps({"bench": "torch_score", "router_logits": router, "batch": args.batch,
                          "seq": args.seq, "seconds": s, "tokens_per_second": tokens / s,
                          "peak_bytes": torch.cuda.max_memory_allocated()}), flush=True)

    for batch in (1, 32):
        prompt = torch.randint(0, vocab, (batch, args.prompt), device="cuda")
        new = args.new_tokens

        def decode():
            with torch.no_grad():
                net.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             eos_token_id=None, pad_token_id=0)

        s = timed(decode, warmup=1, iters=3)
        print(json.dumps({"bench": "torch_decode", "batch": batch, "prompt": args.prompt,
                          "new_tokens": new, "seconds": s,
                          "tokens_per_second": batch * new / s}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("matmul")
    m.add_argument("--shapes", default="4096,8192")
    m.add_argument("--dtypes", default="f32,f16,bf16")
    g = sub.add_parser("model")
    g.add_argument("--config", required=True)
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--seq", type=int, default=2048)
    g.add_argument("--iters", type=int, default=3)
    g.add_argument("--prompt", type=int, default=16)
    g.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()
    {"matmul": matmul, "model": model}[args.what](args)


if __name__ == "__main__":
    main()
