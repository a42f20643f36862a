"""transformers' own bf16 rounding: the largest change of a log-probability when a checkpoint
runs in bfloat16 instead of float32 (CPU, eager), on the text tools/gpu/compare_devices.py scores.
The yardstick for the workbench's bf16 GPU path. Usage: bf16_vs_f32_transformers.py [MODEL_DIR]"""
import torch, json, sys
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
d = sys.argv[1] if len(sys.argv) > 1 else "models/oss-nano"
tok = PreTrainedTokenizerFast(tokenizer_file=f"{d}/tokenizer.json")
text = "The capital of France is Paris. 2 + 2 = 4, and 7 * 8 = 56; one two three four five six seven."
ids = torch.tensor([tok(text)["input_ids"]])
def lp(dtype):
    from transformers import Mxfp4Config
    m = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", quantization_config=Mxfp4Config(dequantize=True)).float().to(dtype).eval()
    with torch.no_grad():
        logits = m(ids).logits.float()
    l = torch.log_softmax(logits[0, :-1], -1)
    return l.gather(-1, ids[0, 1:, None])[:, 0]
a, b = lp(torch.float32), lp(torch.bfloat16)
print(json.dumps({"tokens": int(ids.shape[1]), "max_abs_bf16_vs_f32": float((a - b).abs().max()), "mean_abs": float((a - b).abs().mean())}))
