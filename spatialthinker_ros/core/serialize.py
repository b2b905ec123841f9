"""Plain-JSON form of engine results (CLI `--json`, replay JSONL)."""

from __future__ import annotations

from typing import Any

from .scene import SceneGraph
from .types import Result


def scene_graph_to_dict(graph: SceneGraph) -> dict[str, Any]:
    return {
        "image_width": graph.image_width,
        "image_height": graph.image_height,
        # The frame of the positions and sizes ("" = the image header's frame).
        "positions_frame_id": graph.positions_frame_id,
        "objects": [
            {
                "id": o.id,
                "label": o.label,
                "box": None if o.box is None else [round(v, 2) for v in o.box.as_list()],
                "position": None if o.position is None else [round(v, 4) for v in o.position],
                "size": None if o.size is None else [round(v, 4) for v in o.size],
            }
            for o in graph.objects
        ],
        "relations": [
            {"subject": r.subject, "predicate": r.predicate, "object": r.object}
            for r in graph.relations
        ],
    }


def result_to_dict(result: Result) -> dict[str, Any]:
    r = result.reasoning
    return {
        "question": result.question,
        "choices": list(result.choices),
        "status": r.status.value,
        "status_message": r.message,
        "option": r.answer.option,
        "answer_text": r.answer.text,
        "matched_choice": r.answer.matched_choice,
        "observation": r.observation,
        "reasoning": r.thought,
        "scene_graph": scene_graph_to_dict(r.scene_graph),
        "source_size": list(result.source_size),
        "model_size": list(result.model_size),
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "timings_s": {
            "preprocess": round(result.timings.preprocess_s, 4),
            "generate": round(result.timings.generate_s, 4),
            "parse": round(result.timings.parse_s, 4),
            "total": round(result.timings.total_s, 4),
        },
        "prompt_version": result.prompt_version,
        "stop_after": result.stop_after,
        "raw_output": r.raw,
    }
