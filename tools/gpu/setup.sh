#!/usr/bin/env bash
# Sourced at the start of every GPU-machine run: installs the Vulkan loader carried in .gl/
# (the machine has the NVIDIA driver but no loader) and unpacks the binary carried in .bench/.
set -euo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
# The driver's own manifest names libGLX_nvidia, which on a headless machine may refuse to create
# an instance ("Could not get 'vkCreateInstance' via 'vk_icdGetInstanceProcAddr'", seen
# 2026-11-27); the same driver's EGL library serves Vulkan without a display.
printf '{"file_format_version":"1.0.1","ICD":{"library_path":"libEGL_nvidia.so.0","api_version":"1.4.312"}}' \
  > /tmp/nvidia_egl_icd.json
export VK_DRIVER_FILES=/tmp/nvidia_egl_icd.json
export XDG_RUNTIME_DIR=/tmp
export BIN=/tmp/gpt-oss-lite
xz -dc .bench/gpt-oss-lite.xz > "$BIN"
chmod +x "$BIN"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
