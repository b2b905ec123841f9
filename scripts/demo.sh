#!/usr/bin/env bash
# The main job, on any machine (no ROS needed): write a sample camera bag (colour, depth,
# camera_info), replay it through SpatialThinker, and write an output bag (scene graphs, answers,
# annotated images, markers), a JSONL of results and the annotated frames as PNG files.
#   MODEL=OX-PIXL/SpatialThinker-3B bash scripts/demo.sh   # the real model (downloads once)
#   bash scripts/demo.sh                                   # default: tiny offline test model
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
OUT=${OUT:-$ROOT/demo_out}
ST="$VENV/bin/spatialthinker-ros"
mkdir -p "$OUT"
EXTRA=()
if [ -z "${MODEL:-}" ]; then
  # The tiny model is fitted to always give the same answer: it shows the plumbing, not skill.
  MODEL="$OUT/tiny-model"
  [ -f "$MODEL/config.json" ] || "$ST" make-test-model --fitted "$MODEL"
  EXTRA=(--max-pixels 306544)
  export HF_HUB_OFFLINE=1
fi
rm -rf "$OUT/sample_bag" "$OUT/results_bag" "$OUT/frames"
"$ST" make-sample-bag "$OUT/sample_bag"
"$ST" replay "$OUT/sample_bag" \
  --image-topic /camera/image_raw \
  --depth-topic /camera/depth/image_raw --camera-info-topic /camera/camera_info \
  --question "Where is the red cube relative to the blue ball?" --choices left right above below \
  --out "$OUT/results_bag" --jsonl "$OUT/results.jsonl" --save-frames "$OUT/frames" \
  --model "$MODEL" "${EXTRA[@]}"
echo "results: $OUT/results.jsonl, bag: $OUT/results_bag, annotated frames: $OUT/frames/"
