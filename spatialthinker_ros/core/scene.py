"""Typed results of one SpatialThinker answer: scene graph, answer, parse status."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels of some image frame (x to the right, y down)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x_min + self.x_max) / 2.0, (self.y_min + self.y_max) / 2.0)

    def as_list(self) -> list[float]:
        return [self.x_min, self.y_min, self.x_max, self.y_max]


@dataclass(frozen=True)
class SceneObject:
    """One object the model grounded. `label` is the id's prefix (`cat.1` -> `cat`)."""

    id: str
    label: str
    box: Box | None = None
    # 3D centre (metres) in the graph's `positions_frame_id`, when depth + intrinsics (and the
    # transform, for a target frame) gave one.
    position: tuple[float, float, float] | None = None
    # Size (metres) of the axis-aligned 3D box around the object's depth points, along the
    # axes of the same frame (core.transforms.object_extents).
    size: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Relation:
    """A relation the model claims (not ground truth: the paper measures ~0.32 triplet Jaccard)."""

    subject: str
    predicate: str
    object: str


@dataclass(frozen=True)
class SceneGraph:
    """Objects and relations; boxes are in pixels of an image of `image_width` x `image_height`."""

    objects: tuple[SceneObject, ...] = ()
    relations: tuple[Relation, ...] = ()
    image_width: int = 0
    image_height: int = 0
    # The frame of every object's position and size; "" = the image header's frame (camera).
    positions_frame_id: str = ""

    def object_by_id(self, object_id: str) -> SceneObject | None:
        return next((o for o in self.objects if o.id == object_id), None)

    def with_objects(self, objects: tuple[SceneObject, ...]) -> SceneGraph:
        return replace(self, objects=objects)


@dataclass(frozen=True)
class FinalAnswer:
    """The final answer: option letter (`B`) when the model gave one, and the answer text."""

    option: str = ""
    text: str = ""
    # The choice the option/text matched, when choices were given ("" when unmatched).
    matched_choice: str = ""


class ParseStatus(enum.Enum):
    OK = "ok"  # every section present and well formed
    PARTIAL = "partial"  # an answer was found but something else was missing or repaired
    PARSE_ERROR = "parse_error"  # no usable answer


@dataclass(frozen=True)
class Reasoning:
    """Everything parsed from one model output. Never raised from: see `status`/`message`."""

    raw: str
    observation: str = ""
    scene_graph: SceneGraph = field(default_factory=SceneGraph)
    thought: str = ""
    answer: FinalAnswer = field(default_factory=FinalAnswer)
    status: ParseStatus = ParseStatus.PARSE_ERROR
    # Human-readable notes on what was missing or repaired ("" when OK).
    message: str = ""
