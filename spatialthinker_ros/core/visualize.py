"""Scene graph drawn on the frame (Pillow only): boxes, ids, relation arrows, the answer.

The result is what the node publishes on `debug_image` and replay writes to its output bag.
Sizes scale with the image, so labels read the same at 640 x 480 and at 1920 x 1080.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import ImageConversionError
from .scene import Box, FinalAnswer, SceneGraph

Color = tuple[int, int, int]

# Mutually distinct colours (after Sasha Trubetskoy's list), without the dark ones: they vanish
# on dark scenes and under the dark predicate labels.
PALETTE: tuple[Color, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
    (170, 110, 40), (250, 190, 212), (170, 255, 195), (255, 255, 255),
)  # fmt: skip
_PREDICATE_BACKGROUND: Color = (24, 24, 24)
_BANNER_OPACITY = 180  # of 255: the frame stays faintly visible under the answer
_MAX_LABEL_CHARS = 60
_MAX_BANNER_CHARS = 240


def object_color(object_id: str) -> Color:
    """The colour of `object_id` in every frame (a CRC of the id picks a palette slot)."""
    return PALETTE[zlib.crc32(object_id.encode("utf-8", "replace")) % len(PALETTE)]


def object_colors(object_ids: Iterable[str]) -> dict[str, Color]:
    """Colours for the ids of one frame: `object_color` unless another id of the frame already
    took that slot, then the next free slot (ids in sorted order, so the result is stable)."""
    colors: dict[str, Color] = {}
    taken: set[int] = set()
    for object_id in sorted(set(object_ids)):
        slot = zlib.crc32(object_id.encode("utf-8", "replace")) % len(PALETTE)
        if len(taken) < len(PALETTE):
            while slot in taken:
                slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        colors[object_id] = PALETTE[slot]
    return colors


@dataclass(frozen=True)
class _Style:
    line_width: int
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    padding: int
    text_top: int  # offset of the tallest glyphs' top below the text origin
    label_height: int  # height of a one-line label with its padding

    @property
    def text_height(self) -> int:
        return self.label_height - 2 * self.padding


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _style(width: int, height: int) -> _Style:
    scale = min(width, height) / 480.0
    font_size = int(min(max(round(14 * scale), 10), 64))
    font = _font(font_size)
    padding = max(1, round(font_size / 5))
    _, top, _, bottom = font.getbbox("Ag|")
    return _Style(
        line_width=max(1, round(2 * scale)),
        font=font,
        padding=padding,
        text_top=int(top),
        label_height=int(bottom - top) + 2 * padding,
    )


def _text_color(background: Color) -> Color:
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _clean(text: str, max_chars: int = _MAX_LABEL_CHARS) -> str:
    """One printable line, length-capped (model text may hold anything)."""
    line = "".join(c if c.isprintable() else " " for c in text[: max_chars + 1]).strip()
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


def _pixel_box(box: Box, sx: float, sy: float, width: int, height: int) -> tuple[int, ...] | None:
    """The box in integer pixels of the drawn image, clipped; None when unusable or outside."""
    coords = (box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy)
    if not all(math.isfinite(c) for c in coords):
        return None
    x0, x1 = sorted((coords[0], coords[2]))
    y0, y1 = sorted((coords[1], coords[3]))
    if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
        return None
    return (
        round(min(max(x0, 0), width - 1)),
        round(min(max(y0, 0), height - 1)),
        round(min(max(x1, 0), width - 1)),
        round(min(max(y1, 0), height - 1)),
    )


def _label(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[float, float],
    style: _Style,
    fill: Color,
    text_fill: Color,
    size: tuple[int, int],
    outline: Color | None = None,
) -> None:
    """Text on a filled rectangle whose top-left is `anchor`, kept inside the image."""
    box_w = round(draw.textlength(text, font=style.font)) + 2 * style.padding
    box_h = style.label_height
    x = int(min(max(anchor[0], 0), max(size[0] - box_w, 0)))
    y = int(min(max(anchor[1], 0), max(size[1] - box_h, 0)))
    border = max(1, style.line_width // 2) if outline is not None else 0
    draw.rectangle((x, y, x + box_w - 1, y + box_h - 1), fill=fill, outline=outline, width=border)
    origin = (x + style.padding, y + style.padding - style.text_top)
    draw.text(origin, text, fill=text_fill, font=style.font)


def _arrow(
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    end: tuple[float, float],
    color: Color,
    line_width: int,
) -> None:
    draw.line((start, end), fill=color, width=line_width)
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    if length < 1:
        return
    head = min(4 * line_width + 6, length / 2)
    ux, uy = (end[0] - start[0]) / length, (end[1] - start[1]) / length
    base = (end[0] - ux * head, end[1] - uy * head)
    half = head / 2
    draw.polygon(
        (
            end,
            (base[0] - uy * half, base[1] + ux * half),
            (base[0] + uy * half, base[1] - ux * half),
        ),
        fill=color,
    )


def _answer_text(answer: FinalAnswer) -> str:
    option, text = _clean(answer.option), _clean(answer.text, _MAX_BANNER_CHARS)
    if option and text:
        return f"({option}) {text}"
    return f"({option})" if option else (text or "(no answer)")


def _fit_width(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def draw_scene_graph(
    rgb: np.ndarray, graph: SceneGraph, answer: FinalAnswer | None = None
) -> np.ndarray:
    """A new H x W x 3 uint8 copy of `rgb` with the scene graph (and answer) drawn on it.

    Boxes are in `rgb`'s pixels; when the graph states another, non-zero image size, they are
    scaled from it. Objects without a box, non-finite or out-of-frame boxes are not drawn.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3:
        raise ImageConversionError("draw_scene_graph expects an H x W x 3 uint8 array")
    if rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError(f"draw_scene_graph expects H x W x 3, got {rgb.shape}")
    height, width = rgb.shape[:2]
    image = Image.fromarray(np.ascontiguousarray(rgb))  # Pillow copies RGB into its own buffer
    draw = ImageDraw.Draw(image)
    style = _style(width, height)
    sx = width / graph.image_width if graph.image_width > 0 else 1.0
    sy = height / graph.image_height if graph.image_height > 0 else 1.0
    colors = object_colors(o.id for o in graph.objects)
    boxes = {}
    for obj in graph.objects:
        if obj.box is not None and obj.id not in boxes:
            pixel_box = _pixel_box(obj.box, sx, sy, width, height)
            if pixel_box is not None:
                boxes[obj.id] = pixel_box

    # Banner height first: labels are kept below it.
    banner_text = _answer_text(answer) if answer is not None else ""
    banner_h = style.label_height + style.padding if banner_text else 0

    for object_id, box in boxes.items():
        draw.rectangle(box, outline=colors[object_id], width=style.line_width)

    # Relations: arrows between box centres, the predicate at the middle (stacked per pair).
    centers = {i: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for i, b in boxes.items()}
    predicate_labels = []
    per_pair: dict[frozenset[str], int] = {}
    for relation in graph.relations:
        if relation.subject == relation.object:
            continue
        start, end = centers.get(relation.subject), centers.get(relation.object)
        if start is None or end is None:
            continue
        color = colors[relation.subject]
        _arrow(draw, start, end, color, style.line_width)
        pair = frozenset((relation.subject, relation.object))
        stack = per_pair.get(pair, 0)
        per_pair[pair] = stack + 1
        predicate_labels.append((_clean(relation.predicate), start, end, color, stack))

    label_h = style.label_height
    for object_id, box in boxes.items():
        above = box[1] - label_h
        anchor_y = above if above >= banner_h else box[1] + style.line_width
        color = colors[object_id]
        anchor = (box[0], max(anchor_y, banner_h))
        _label(draw, _clean(object_id), anchor, style, color, _text_color(color), (width, height))

    for text, start, end, color, stack in predicate_labels:
        if not text:
            continue
        text_w = draw.textlength(text, font=style.font) + 2 * style.padding
        middle = ((start[0] + end[0]) / 2 - text_w / 2, (start[1] + end[1]) / 2 - label_h / 2)
        anchor = (middle[0], max(middle[1] + stack * (label_h + 1), banner_h))
        _label(
            draw,
            text,
            anchor,
            style,
            _PREDICATE_BACKGROUND,
            (255, 255, 255),
            (width, height),
            outline=color,
        )

    if banner_text:
        region = (0, 0, width, min(banner_h, height))
        image.paste((0, 0, 0), region, Image.new("L", region[2:], _BANNER_OPACITY))
        text = _fit_width(draw, banner_text, style.font, width - 2 * style.padding)
        origin = (style.padding, style.padding - style.text_top)
        draw.text(origin, text, fill=(255, 255, 255), font=style.font)
    return np.array(image)
