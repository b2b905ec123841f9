"""What the paper reports for SpatialThinker-3B, and the settings its evaluation used.

The one place these facts live in code. Sources (file and line): docs/model.md, section
"Evaluation settings".
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "SpatialThinker-3B, arXiv 2511.07403 v2"

# Accuracy (fraction) the paper reports for SpatialThinker-3B, keyed by the report's group
# names: a benchmark ("CV-Bench 2D") or a benchmark's task ("BLINK/Spatial_Relation"). Groups
# this tool cannot read from their published files (3DSRBench, ...) still compare when a
# generic JSONL names them in its `benchmark` field.
REPORTED_ACCURACY: dict[str, float] = {
    "CV-Bench 2D": 0.710,
    "CV-Bench 3D": 0.763,
    "BLINK/Spatial_Relation": 0.818,
    "BLINK/Relative_Depth": 0.669,
    "3DSRBench": 0.529,
    "SpatialBench": 0.615,
    "RealWorldQA": 0.663,
    "RoboSpatial-Home": 0.706,
}


@dataclass(frozen=True)
class PaperEvalSettings:
    """Where `eval`'s defaults differ from the node's (evaluation/evals.py at 4ac41cf)."""

    prompt_style: str = "paper_eval"  # evals.py --template spatial_thinker (lines 900-907)
    min_pixels: int = 4 * 28 * 28  # qwen-vl-utils MIN_PIXELS (process_vision_info defaults)
    max_pixels: int = 16384 * 28 * 28  # qwen-vl-utils MAX_PIXELS: 12,845,056, full resolution
    max_new_tokens: int = 2048  # evals.py ModelConfig.max_new_tokens (line 106); greedy (107)


PAPER_EVAL = PaperEvalSettings()

# The published files the paper's numbers come from, per hub dataset (evals.py lines 558-575,
# 689-709: BLINK val split of Spatial_Relation and Relative_Depth; CV-Bench 2D and 3D test).
PAPER_FILES: dict[str, tuple[str, ...]] = {
    "nyu-visionx/CV-Bench": ("test_2d.parquet", "test_3d.parquet"),
    "BLINK-Benchmark/BLINK": ("Spatial_Relation/val-*.parquet", "Relative_Depth/val-*.parquet"),
}
