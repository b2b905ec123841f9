"""draw_scene_graph: boxes in their colours, relations, banner, robustness to odd boxes."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from spatialthinker_ros.core.images import ImageConversionError
from spatialthinker_ros.core.scene import Box, FinalAnswer, Relation, SceneGraph, SceneObject
from spatialthinker_ros.core.visualize import (
    PALETTE,
    draw_scene_graph,
    object_color,
    object_colors,
)

WIDTH, HEIGHT = 200, 150


def black() -> np.ndarray:
    return np.zeros((HEIGHT, WIDTH, 3), np.uint8)


def obj(object_id: str, *box: float) -> SceneObject:
    return SceneObject(object_id, object_id.split(".")[0], Box(*box) if box else None)


def test_box_edges_take_the_object_colour_and_the_inside_stays() -> None:
    graph = SceneGraph((obj("cube.1", 20, 40, 120, 130),))
    out = draw_scene_graph(black(), graph)
    color = object_colors(["cube.1"])["cube.1"]
    assert color == object_color("cube.1")  # alone in the frame: its own colour
    for y, x in [(90, 20), (90, 120), (130, 70)]:  # left, right, bottom edge
        assert tuple(out[y, x]) == color
    assert not out[90, 70].any()  # inside the box, away from edges and label
    assert not out[5:35, 150:].any()  # nothing drawn far from the box


def test_label_is_drawn_above_the_box_on_its_colour() -> None:
    out = draw_scene_graph(black(), SceneGraph((obj("cube.1", 20, 60, 120, 130),)))
    label_area = out[40:59, 20:60].reshape(-1, 3)
    color = np.array(object_color("cube.1"))
    assert (label_area == color).all(axis=1).mean() > 0.3  # filled background
    assert not (label_area == color).all(axis=1).all()  # with text on it


def test_colours_are_stable_and_distinct_within_a_frame() -> None:
    assert object_color("cup.1") == object_color("cup.1") in PALETTE
    # Two ids landing on the same palette slot still get different colours in one frame.
    slot = zlib.crc32(b"a.0") % len(PALETTE)
    twin = next(
        f"a.{i}" for i in range(1, 10_000) if zlib.crc32(f"a.{i}".encode()) % len(PALETTE) == slot
    )
    colors = object_colors(["a.0", twin])
    assert object_color(twin) == object_color("a.0")
    assert colors["a.0"] != colors[twin]
    assert object_colors([twin, "a.0"]) == colors  # order of the objects does not matter


def test_more_objects_than_colours_still_draws() -> None:
    graph = SceneGraph(tuple(obj(f"o.{i}", i, i, i + 20, i + 20) for i in range(40)))
    colors = object_colors(o.id for o in graph.objects)
    assert len(colors) == 40 and set(colors.values()) == set(PALETTE)
    assert draw_scene_graph(black(), graph).shape == (HEIGHT, WIDTH, 3)


def test_relation_arrow_runs_between_box_centres_in_the_subject_colour() -> None:
    graph = SceneGraph(
        (obj("cube.1", 10, 60, 50, 100), obj("ball.1", 150, 60, 190, 100)),
        (Relation("cube.1", "left of", "ball.1"),),
    )
    colors = object_colors(["cube.1", "ball.1"])
    out = draw_scene_graph(black(), graph)
    assert tuple(out[80, 65]) == colors["cube.1"]  # on the line, between the boxes
    assert tuple(out[80, 135]) == colors["cube.1"]
    without = draw_scene_graph(black(), SceneGraph(graph.objects))
    assert not without[80, 65].any()


def test_predicate_label_is_drawn_at_the_middle() -> None:
    graph = SceneGraph(
        (obj("cube.1", 10, 60, 50, 100), obj("ball.1", 150, 60, 190, 100)),
        (Relation("cube.1", "left of", "ball.1"),),
    )
    with_label = draw_scene_graph(black(), graph)
    no_label = draw_scene_graph(
        black(), SceneGraph(graph.objects, (Relation("cube.1", "", "ball.1"),))
    )
    middle = (slice(70, 90), slice(85, 115))
    assert (with_label[middle] != no_label[middle]).any()


def test_relations_with_unknown_or_boxless_objects_or_self_are_skipped() -> None:
    objects = (obj("cube.1", 10, 60, 50, 100), obj("ghost.1"))
    relations = (
        Relation("cube.1", "near", "ghost.1"),
        Relation("cube.1", "near", "missing.9"),
        Relation("cube.1", "same as", "cube.1"),
    )
    plain = draw_scene_graph(black(), SceneGraph(objects))
    np.testing.assert_array_equal(draw_scene_graph(black(), SceneGraph(objects, relations)), plain)


def test_empty_graph_without_answer_returns_an_equal_new_image() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = draw_scene_graph(rgb, SceneGraph())
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)
    assert out.flags.c_contiguous and out.flags.writeable and out.dtype == np.uint8


def test_input_is_not_modified() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    before = rgb.copy()
    graph = SceneGraph(
        (obj("cube.1", 10, 60, 50, 100), obj("ball.1", 150, 60, 190, 100)),
        (Relation("cube.1", "left of", "ball.1"),),
    )
    out = draw_scene_graph(rgb, graph, FinalAnswer("A", "left"))
    np.testing.assert_array_equal(rgb, before)
    assert (out != rgb).any()


def test_read_only_and_strided_inputs_are_accepted() -> None:
    base = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    strided = base[..., :3]  # e.g. the rgba8 view image_to_rgb returns
    read_only = np.frombuffer(bytes(HEIGHT * WIDTH * 3), np.uint8).reshape(HEIGHT, WIDTH, 3)
    graph = SceneGraph((obj("cube.1", 20, 40, 120, 130),))
    for rgb in (strided, read_only):
        out = draw_scene_graph(rgb, graph)
        assert tuple(out[90, 20]) == object_color("cube.1")


def test_answer_banner_darkens_the_top_and_leaves_the_rest() -> None:
    white = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    out = draw_scene_graph(white, SceneGraph(), FinalAnswer("B", "right of the cube"))
    corner = out[2, WIDTH - 3]
    assert 0 < corner.max() < 128  # translucent dark banner
    assert (out[: HEIGHT // 4].min(axis=2) > 200).any()  # white answer text in it
    assert (out[HEIGHT // 2 :] == 255).all()


@pytest.mark.parametrize(
    "answer",
    [FinalAnswer("", ""), FinalAnswer("C", ""), FinalAnswer("", "x" * 5000)],
)
def test_partial_or_huge_answers_draw_a_banner(answer: FinalAnswer) -> None:
    out = draw_scene_graph(np.full((HEIGHT, WIDTH, 3), 255, np.uint8), SceneGraph(), answer)
    assert out[2, WIDTH - 3].max() < 128


def test_graph_size_scales_boxes_to_the_drawn_image() -> None:
    # Boxes stated for a 100 x 75 image, drawn on a 200 x 150 one: twice as far.
    graph = SceneGraph((obj("cube.1", 10, 20, 60, 65),), image_width=100, image_height=75)
    out = draw_scene_graph(black(), graph)
    assert tuple(out[90, 20]) == object_color("cube.1")
    assert not out[40:, 10].any()  # not at the unscaled position


@pytest.mark.parametrize(
    "box",
    [
        Box(-50, -50, 80, 70),  # partly outside
        Box(150, 100, 10_000, 10_000),
        Box(-500, -500, -100, -100),  # fully outside
        Box(300, 10, 400, 20),
        Box(120, 130, 20, 40),  # corners swapped
        Box(50, 50, 50, 50),  # zero size
        Box(float("nan"), 0, 10, 10),
        Box(0, float("-inf"), float("inf"), 10),
        Box(-1e300, -1e300, 1e300, 1e300),
    ],
)
def test_odd_boxes_do_not_crash(box: Box) -> None:
    graph = SceneGraph(
        (SceneObject("odd.1", "odd", box), obj("cube.1", 20, 40, 120, 130)),
        (Relation("odd.1", "near", "cube.1"), Relation("cube.1", "near", "odd.1")),
    )
    out = draw_scene_graph(black(), graph, FinalAnswer("A", "yes"))
    assert out.shape == (HEIGHT, WIDTH, 3)


def test_fully_outside_box_draws_nothing() -> None:
    graph = SceneGraph((obj("far.1", -500, -500, -100, -100), obj("far.2", 500, 500, 900, 900)))
    np.testing.assert_array_equal(draw_scene_graph(black(), graph), black())


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5, 400), (400, 5)])
def test_tiny_and_thin_images(size: tuple[int, int]) -> None:
    width, height = size
    graph = SceneGraph((obj("cube.1", 0, 0, width, height),), (Relation("cube.1", "on", "x.1"),))
    out = draw_scene_graph(np.zeros((height, width, 3), np.uint8), graph, FinalAnswer("A", "x"))
    assert out.shape == (height, width, 3)


def test_model_text_with_odd_characters_is_drawn() -> None:
    graph = SceneGraph(
        (obj("line\nbreak\t.1", 10, 60, 50, 100), obj("猫.1", 150, 60, 190, 100),
         obj("x" * 500 + ".1", 60, 20, 140, 50), obj("\x00\x1b[31m.2", 70, 110, 90, 140)),
        (Relation("猫.1", "🙂 left\r\nof", "line\nbreak\t.1"),),
    )  # fmt: skip
    out = draw_scene_graph(black(), graph, FinalAnswer("\n", "\x00 answer \u202e"))
    assert out.any()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
        "image",
    ],
)
def test_non_rgb_input_raises_conversion_error(bad) -> None:
    with pytest.raises(ImageConversionError):
        draw_scene_graph(bad, SceneGraph())
