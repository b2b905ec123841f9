"""Box geometry: the model's pixel frame <-> source image pixels (3D lifting: `core.depth`).

SpatialThinker writes boxes as absolute pixels `[x1, y1, x2, y2]` in the frame of the
`Image size: W x H` stated in its prompt (docs/model.md). The engine resizes every frame to the
size Qwen2.5-VL would use anyway (sides multiples of 28 within the pixel budget), states exactly
that size, and maps the boxes back to the camera image with `map_box`.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .scene import Box, SceneGraph
from .types import Size

# Qwen2.5-VL: 14-pixel patches merged 2x2 -> image sides are multiples of 28.
PATCH_FACTOR = 28
MAX_ASPECT_RATIO = 200



def fit_to_pixel_budget(
    width: int, height: int, min_pixels: int, max_pixels: int, factor: int = PATCH_FACTOR
) -> Size:
    """The (width, height) Qwen2.5-VL's processor resizes an image to (its `smart_resize`):
    sides rounded to multiples of `factor`, area within [min_pixels, max_pixels]."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio of {width} x {height} exceeds {MAX_ASPECT_RATIO}"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) exceeds max_pixels ({max_pixels})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def clip_box(box: Box, width: float, height: float) -> Box:
    """Clip to [0, width] x [0, height]."""
    return Box(
        min(max(box.x_min, 0.0), width),
        min(max(box.y_min, 0.0), height),
        min(max(box.x_max, 0.0), width),
        min(max(box.y_max, 0.0), height),
    )


def map_box(box: Box, from_size: Size, to_size: Size) -> Box:
    """Scale a box from an image of `from_size` to one of `to_size` (both (w, h)) and clip it."""
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    scaled = Box(box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy)
    return clip_box(scaled, to_size[0], to_size[1])


def map_scene_graph(graph: SceneGraph, from_size: Size, to_size: Size) -> SceneGraph:
    """A graph parsed in the model's frame, with every box mapped to `to_size` pixels."""
    objects = tuple(
        o if o.box is None else replace(o, box=map_box(o.box, from_size, to_size))
        for o in graph.objects
    )
    return replace(graph, objects=objects, image_width=to_size[0], image_height=to_size[1])
