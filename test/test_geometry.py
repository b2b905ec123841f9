"""Box mapping and 3D lifting."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from spatialthinker_ros.core.depth import CameraIntrinsics, lift_box_to_3d
from spatialthinker_ros.core.geometry import fit_to_pixel_budget, map_box, map_scene_graph
from spatialthinker_ros.core.scene import Box, SceneGraph, SceneObject


@settings(max_examples=400, deadline=None)
@given(
    w=st.integers(28, 5000),
    h=st.integers(28, 5000),
    budget=st.sampled_from([(3136, 1003520), (3136, 12845056), (262144, 4194304), (3136, 306544)]),
)
def test_fit_to_pixel_budget_equals_qwen_smart_resize(w, h, budget):
    if max(w, h) / min(w, h) > 200:
        return
    h_bar, w_bar = smart_resize(h, w, factor=28, min_pixels=budget[0], max_pixels=budget[1])
    assert fit_to_pixel_budget(w, h, *budget) == (w_bar, h_bar)


def test_processor_changes_641x479_to_644x476():
    assert fit_to_pixel_budget(641, 479, 3136, 1003520) == (644, 476)
    assert fit_to_pixel_budget(1920, 1080, 3136, 1003520) == (1316, 728)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        fit_to_pixel_budget(0, 10, 3136, 1003520)
    with pytest.raises(ValueError, match="aspect ratio"):
        fit_to_pixel_budget(10000, 28, 3136, 1003520)
    with pytest.raises(ValueError, match="min_pixels"):
        fit_to_pixel_budget(100, 100, 2000, 1000)


def test_map_box_scales_and_clips():
    mapped = map_box(Box(64, 120, 256, 360), (644, 476), (641, 479))
    assert mapped.x_min == pytest.approx(64 * 641 / 644)
    assert mapped.y_max == pytest.approx(360 * 479 / 476)
    clipped = map_box(Box(-10, -5, 700, 500), (644, 476), (1288, 952))
    assert clipped.as_list() == [0.0, 0.0, 1288.0, 952.0]


def test_map_scene_graph_sets_target_size_and_keeps_boxless_objects():
    graph = SceneGraph((SceneObject("a.1", "a", Box(0, 0, 10, 10)), SceneObject("b.1", "b", None)))
    mapped = map_scene_graph(graph, (100, 100), (200, 50))
    assert (mapped.image_width, mapped.image_height) == (200, 50)
    assert mapped.objects[0].box == Box(0, 0, 20, 5)
    assert mapped.objects[1].box is None


def test_lift_box_uses_median_valid_depth_and_pinhole():
    depth = np.full((480, 640), np.nan, np.float32)
    depth[100:200, 300:400] = 2.0
    depth[100:110, 300:400] = 9.0  # outliers: the median ignores them
    k = CameraIntrinsics(fx=500.0, fy=500.0, cx=320.0, cy=240.0)
    x, y, z = lift_box_to_3d(Box(300, 100, 400, 200), depth, k)
    assert z == pytest.approx(2.0)
    assert x == pytest.approx((350 - 320) * 2.0 / 500)
    assert y == pytest.approx((150 - 240) * 2.0 / 500)


def test_lift_box_without_valid_depth_is_none():
    depth = np.zeros((48, 64), np.float32)
    k = CameraIntrinsics(50.0, 50.0, 32.0, 24.0)
    assert lift_box_to_3d(Box(0, 0, 10, 10), depth, k) is None
    assert lift_box_to_3d(Box(70, 50, 80, 60), depth, k) is None  # outside the image
    assert not math.isnan(lift_box_to_3d(Box(0, 0, 10, 10), depth + 1.0, k)[2])
