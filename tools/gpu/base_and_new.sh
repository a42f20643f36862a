#!/usr/bin/env bash
# Sourced by the base-against-new scripts (decode_, score_ and load_base_vs_new.sh,
# first_generation_memory.sh), after tools/gpu/setup.sh: sets `out` ($OUT or /tmp/out), writes
# the random 20b to `dir` unless it is there (synth takes about 55 s), and sets `bins` to
# "name:path" entries: "new:$BIN", preceded by "base:..." when .bench/base.xz is carried.
# `alternate_runs RUN` then calls `RUN NAME BINARY ROUND` for base and new in turn, ROUNDS times
# (default 2).
out=${OUT:-/tmp/out}
dir=/tmp/synth-20b
[ -f "$dir/config.json" ] || timeout 150 "$BIN" synth --preset 20b --out "$dir" --force > /dev/null 2> "$out/synth.log" || { tail -5 "$out/synth.log"; exit 1; }
bins=("new:$BIN")
if [ -f .bench/base.xz ]; then
  xz -dc .bench/base.xz > /tmp/gpt-oss-lite-base && chmod +x /tmp/gpt-oss-lite-base
  bins=("base:/tmp/gpt-oss-lite-base" "new:$BIN")
fi
echo "binaries: ${bins[*]}"

alternate_runs() {
  local round entry
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for entry in "${bins[@]}"; do
      "$1" "${entry%%:*}" "${entry#*:}" "$round"
    done
  done
}

# memory_run NAME BINARY ROUND: `bench model` on the random 20b with $run_args, nvidia-smi every
# 50 ms split at the load's log line (tools/gpu/memory_phases.py); its files go under $out as
# $run_name-NAME-ROUND.* (the load and first-generation scripts run it).
memory_run() {
  local file="$out/$run_name-$1-$3"
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 50 \
    > "$file.mem.csv" &
  local smi=$!
  # shellcheck disable=SC2086 # run_args is a list of arguments
  timeout 200 "$2" bench model --model "$dir" --device wgpu --experts packed $run_args \
    > "$file.jsonl" 2> "$file.log" \
    || { echo "$1 failed:"; tail -3 "$file.log" | cut -c1-300; }
  kill "$smi"
  python3 "$(dirname "${BASH_SOURCE[0]}")/memory_phases.py" "$file.mem.csv" "$file.log" "$1 round $3"
}
