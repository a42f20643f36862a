#!/usr/bin/env python3
"""Prints `bench kernel-check --decode-timings` JSON lines (files given) as a short table:
kernel, case, microseconds per launch, TB/s of weights, busiest host thread."""
import json
import sys

for path in sys.argv[1:]:
    print(f"== {path}")
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "timing" not in r:
            continue
        case = ",".join(f"{k}={v}" for k, v in r["case"].items())
        tbs = r.get("terabytes_per_second")
        tbs = f"{tbs:5.2f} TB/s" if tbs is not None else "          "
        print(f"{r['timing']:26s} {r['microseconds']:8.1f} us {tbs} host {r['busiest_host_thread']:.2f}  {case}")
