#!/usr/bin/env bash
# Builds the binaries a GPU call carries: .bench/gpt-oss-lite.xz from the working tree and, given
# a revision, .bench/base.xz from that revision (for tools/gpu/decode_base_vs_new.sh).
#
#   tools/gpu/pack_binaries.sh [BASE_REV]
#
# The base is built in a temporary git worktree with the same CARGO_TARGET_DIR (a second target
# folder would be a cold build). Both builds give the binary the same artifact name, so after the
# base build cargo may call the working tree's build fresh and hand back the base binary (seen
# 2026-11-27): the working tree's sources are touched before its build, and the two packed
# files must differ (a build from the worktree's path differs from the checkout's even for the
# same commit, so identical files mean the pitfall).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gpt-oss-lite/target}"
binary="$CARGO_TARGET_DIR/debug/gpt-oss-lite"
mkdir -p .bench

pack() { # pack OUTPUT: strips the freshly built binary into OUTPUT (xz)
  cp "$binary" /tmp/gpt-oss-lite-pack
  strip /tmp/gpt-oss-lite-pack
  xz -T2 -c /tmp/gpt-oss-lite-pack > "$1"
  rm /tmp/gpt-oss-lite-pack
}

if [ $# -ge 1 ]; then
  base=/tmp/gpt-oss-lite-base-tree
  git worktree remove --force "$base" 2> /dev/null || true
  git worktree add -f --detach "$base" "$1" > /dev/null
  (cd "$base" && cargo build --locked -p gpt-oss-lite)
  pack .bench/base.xz
  git worktree remove --force "$base"
  find crates -name '*.rs' -exec touch {} +
fi
cargo build --locked -p gpt-oss-lite
pack .bench/gpt-oss-lite.xz
if [ -f .bench/base.xz ] && cmp -s .bench/base.xz .bench/gpt-oss-lite.xz; then
  echo "pack_binaries: .bench/base.xz and .bench/gpt-oss-lite.xz are the same binary" >&2
  exit 1
fi
ls -l .bench/*.xz
