#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine: its own python, no network, no pip. Writes OUT_DIR/gpu.json,
# gpu.md, env.txt and the log; pure-Python wheels in build/gpu-wheels/ go on PYTHONPATH.
#   bash bench/run_gpu.sh OUT_DIR [gpu.py arguments, e.g. --quick]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:?usage: bench/run_gpu.sh OUT_DIR [gpu.py arguments]}
shift
mkdir -p "$OUT"
PY=$(command -v python3 || command -v python)
WHEELS=$(find build/gpu-wheels -name '*.whl' 2>/dev/null | tr '\n' ':')
export PYTHONPATH=".:${WHEELS}${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  echo "python: $PY ($("$PY" --version 2>&1))"
  echo "C compiler (triton builds its launcher with one): $(command -v gcc cc clang | tr '\n' ' ')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt"
# gpu.py writes its tables after every section; the limit leaves time for the tool's transfers.
timeout -k 10 "${GPU_BENCH_LIMIT_S:-450}" "$PY" bench/gpu.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu.log"
