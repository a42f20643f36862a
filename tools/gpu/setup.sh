#!/usr/bin/env bash
# Sourced at the start of every GPU-machine run: installs the Vulkan loader carried in .gl/
# (the machine has the NVIDIA driver but no loader) and unpacks the binary carried in .bench/.
set -euo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp
export BIN=/tmp/gpt-oss-lite
xz -dc .bench/gpt-oss-lite.xz > "$BIN"
chmod +x "$BIN"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
