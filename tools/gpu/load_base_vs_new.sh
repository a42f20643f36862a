#!/usr/bin/env bash
# On the GPU machine, after tools/gpu/setup.sh: loading a random 20b with the carried binary
# ($BIN) and, when .bench/base.xz is carried, an earlier binary in the same call, alternating
# base / new ROUNDS times (default 2). Each run loads, scores one short pass (1 x 16) and exits;
# nvidia-smi samples the memory every 50 ms. Prints each run's load time (with the host's part,
# where the binary logs it) and nvidia-smi's peak during the load and after it
# (tools/gpu/memory_phases.py). The thirty-first round's calls 2 and 4 ran these commands.
set -uo pipefail
source "$(dirname "$0")/base_and_new.sh"
run_name=load
run_args="--batch 1 --seq 16 --iters 1 --decode-batches 0"
alternate_runs memory_run
