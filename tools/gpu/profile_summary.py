#!/usr/bin/env python3
"""Sums cubecl's per-kernel profile lines (CUBECL_DEBUG_OPTION=profile, CUBECL_DEBUG_LOG=FILE)
by kernel name and prints the largest (total, share, launches, mean per launch): where a forward pass spends its device time.
Usage: profile_summary.py FILE [TOP]"""
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
line_re = re.compile(r"^\| ([\d.]+)(ns|µs|ms|s)\s+\| (.*)$")
totals = defaultdict(float)
counts = defaultdict(int)
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    m = line_re.match(line.rstrip("\n"))
    if not m:
        continue
    parts = [p.strip() for p in m.group(3).split("|") if p.strip()]
    name = " | ".join(re.sub(r"_[0-9a-f]{8}$", "", p) for p in parts[:2])[:90]
    totals[name] += float(m.group(1)) * UNITS[m.group(2)]
    counts[name] += 1
grand = sum(totals.values())
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
print(f"total profiled device time {grand:.3f} s over {sum(counts.values())} launches")
for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    mean_us = 1e6 * t / counts[name]
    print(f"{t:9.3f} s {100 * t / grand:5.1f}% {counts[name]:7d} {mean_us:9.1f} us  {name}")
