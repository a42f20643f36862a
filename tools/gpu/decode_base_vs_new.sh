#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: greedy decode on a random 20b with the carried
# binary ($BIN) and, when .bench/base.xz is carried, an earlier binary in the same call,
# alternating base / new ROUNDS times (default 2) so that the spread between runs of one binary
# shows beside the difference between them. Prints each run's decode lines (tokens/s with and
# without prefill) and the host's busiest thread. BENCH_EXTRA adds arguments to every `bench model`
# (e.g. "--timed-generations 9").
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
decode_run() { # decode_run NAME BINARY ROUND
  local name=$1 bin=$2 round=$3
  timeout 300 "$bin" bench model --model "$dir" --device wgpu --experts packed --batch 1 --seq 16 \
    --iters 1 --decode-batches ${DECODE_BATCHES:-1,32} --new-tokens ${NEW_TOKENS:-64} ${BENCH_EXTRA:-} \
    > "$out/decode-$name-$round.jsonl" 2> "$out/decode-$name-$round.log" \
    || { echo "$name failed:"; tail -3 "$out/decode-$name-$round.log" | cut -c1-300; return; }
  python3 - "$out/decode-$name-$round.jsonl" "$name" "$round" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "decode" not in json.dumps(r):
        continue
    host = r.get("host_cpu_seconds_by_thread") or {}
    busiest = max(host.items(), key=lambda kv: kv[1]) if host else ("-", 0)
    fields = {k: v for k, v in r.items() if k != "host_cpu_seconds_by_thread"}
    print(sys.argv[2], sys.argv[3], json.dumps(fields), "busiest host thread:", busiest)
PY
}
alternate_runs decode_run
