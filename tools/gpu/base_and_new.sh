#!/usr/bin/env bash
# Sourced by the base-against-new scripts (decode_, score_ and load_base_vs_new.sh), after
# tools/gpu/setup.sh: sets `out` ($OUT or /tmp/out), writes the random 20b to `dir` unless it is
# there (synth takes about 55 s), and sets `bins` to "name:path" entries: "new:$BIN", preceded by
# "base:..." when .bench/base.xz is carried. `alternate_runs RUN` then calls `RUN NAME BINARY
# ROUND` for base and new in turn, ROUNDS times (default 2).
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
