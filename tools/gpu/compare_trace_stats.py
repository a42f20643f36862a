#!/usr/bin/env python3
"""Compares the per-expert statistics (stats.json) of two `gpt-oss-lite trace` runs of the same
data, for example the CPU reference against the GPU:

    compare_trace_stats.py REFERENCE/stats.json OTHER/stats.json [--exact]

Prints the routed assignments, how many differ (the sum over layers and experts of the count
differences) and the largest relative difference of each summed value. With --exact it fails
unless every count is equal and the sums agree to 1e-5 (the f32 GPU path against the CPU)."""
import json
import sys

SUMS = ("gate_mass", "reap_sum", "ean_sum", "max_activation")


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--exact"]
    exact = "--exact" in sys.argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ref, other = (json.load(open(path)) for path in args)
    for key in ("num_layers", "num_experts", "tasks", "tokens"):
        if ref[key] != other[key]:
            print(f"{key} differs: {ref[key]} against {other[key]}", file=sys.stderr)
            return 1
    routed = changed = 0
    worst = dict.fromkeys(SUMS, 0.0)
    for layer_ref, layer_other in zip(ref["cells"], other["cells"]):
        for task_ref, task_other in zip(layer_ref, layer_other):
            for a, b in zip(task_ref, task_other):
                routed += a["count"]
                changed += abs(a["count"] - b["count"])
                for key in SUMS:
                    scale = max(abs(a[key]), 1e-12)
                    worst[key] = max(worst[key], abs(a[key] - b[key]) / scale)
    print(json.dumps({"routed": routed, "count_differences": changed,
                      "max_relative_difference": worst}))
    if exact and (changed or max(worst.values()) > 1e-5):
        print("not the same routing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
