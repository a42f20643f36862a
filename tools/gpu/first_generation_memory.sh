#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: a random 20b's first greedy generation at batch 1
# (where a decode step is first captured), with the carried binary ($BIN) and, when
# .bench/base.xz is carried, an earlier binary in the same call, alternating base / new ROUNDS
# times (default 1). nvidia-smi samples the memory every 50 ms; prints each run's peak during
# the load and after it (tools/gpu/memory_phases.py). The thirty-second round's call 14 saw
# 24,182 MiB after the load, against 16,810 during it: the capture's preparation copied what the
# dynamic pools' outdated pages held (about the experts' bytes), then freed it.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
run_name=generation
run_args="--batch 1 --seq 16 --iters 1 --decode-batches 1 --new-tokens 32"
ROUNDS=${ROUNDS:-1} alternate_runs memory_run
