#!/usr/bin/env bash
# On the GPU machine: trace throughput on a random full-size gpt-oss-20b with and without
# recording, then a small experiment (trace, select, eval, report) on it.
set -euo pipefail
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
"$BIN" synth --preset 20b --out "$dir" --force 2> "$out/synth.log" || { tail -20 "$out/synth.log"; exit 1; }
if [ -z "${SKIP_BENCH:-}" ]; then
head -${SAMPLES:-8} datasets/nano/calibration/diverse.jsonl > /tmp/sample.jsonl
timeout 300 "$BIN" bench trace --model "$dir" --device wgpu --experts packed --data /tmp/sample.jsonl \
  --batch-size ${SAMPLES:-8} > "$out/bench-trace-20b.json" 2> "$out/bench-trace-20b.log" || tail -20 "$out/bench-trace-20b.log"
cat "$out/bench-trace-20b.json"
fi
[ -n "${SKIP_EXPERIMENT:-}" ] && exit 0
/usr/bin/time -v timeout 420 "$BIN" run tools/gpu/experiment-20b-smoke.toml --model "$dir" \
  --out "$out/report-20b-smoke" --cache /tmp/cache-20b > "$out/run-20b.json" 2> "$out/run-20b.log" \
  || tail -30 "$out/run-20b.log"
grep -E "stages|Elapsed|Maximum resident" "$out/run-20b.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
head -40 "$out/report-20b-smoke/quality-table.md" 2>/dev/null || true
