"""The text the bf16 comparisons score, so that their figures compare: tools/gpu/compare_devices.py
(the GPU against the CPU) and tools/reference/bf16_vs_f32_transformers.py (transformers' bf16 run
against its f32 run). TEXT replaces it; REPEAT=N takes it N times over (a longer context)."""
import os

# 55 tokens on oss-nano, 65 on tiny-dense: past the 32 tokens from which the GPU takes scoring's
# path (tensor-core products, attention in tiles). A TEXT of 17 to 32 tokens reaches attention in
# tiles and the few-rows products.
DEFAULT = "The capital of France is Paris. 2 + 2 = 4, and 7 * 8 = 56; one two three four five six seven."


def compare_text():
    """DEFAULT, or TEXT, REPEAT times over (joined by spaces)."""
    text = os.environ.get("TEXT", DEFAULT)
    return " ".join([text] * int(os.environ.get("REPEAT", "1")))
