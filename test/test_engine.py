"""The engine on real tiny Qwen2.5-VL models, loaded through from_pretrained like the real one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.core.engine import (
    EngineConfig,
    EngineError,
    GenerationStopped,
    ModelLoadError,
    SpatialThinkerEngine,
)
from spatialthinker_ros.core.prompt import build_prompt
from spatialthinker_ros.core.scene import ParseStatus
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT

# Boxes of EXAMPLE_OUTPUT, in the frame of the size stated in the prompt.
CUBE = (64, 120, 256, 360)
BALL = (384, 180, 576, 420)


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    engine = SpatialThinkerEngine(
        EngineConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=24)
    )
    engine.load()
    return engine


def test_fitted_model_full_chain_text_to_mapped_boxes(fitted_engine):
    """641x479 is fed as 644x476: the prompt states 644x476 and boxes come back in 641x479."""
    result = fitted_engine.answer(noise_image(641, 479), "Where is the cube?", ["left", "right"])
    assert result.raw == EXAMPLE_OUTPUT
    assert result.model_size == (644, 476)
    assert result.source_size == (641, 479)
    r = result.reasoning
    assert r.status is ParseStatus.OK
    assert (r.answer.option, r.answer.text, r.answer.matched_choice) == ("A", "left", "left")
    graph = r.scene_graph
    assert (graph.image_width, graph.image_height) == (641, 479)
    assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
    assert [o.label for o in graph.objects] == ["cube", "ball"]
    sx, sy = 641 / 644, 479 / 476
    cube = graph.object_by_id("cube.1").box
    assert cube.as_list() == pytest.approx([CUBE[0] * sx, CUBE[1] * sy, CUBE[2] * sx, CUBE[3] * sy])
    assert [(x.subject, x.predicate, x.object) for x in graph.relations] == [
        ("cube.1", "left of", "ball.1")
    ]
    assert result.generated_tokens == len(result.generated_token_ids) > 50
    assert result.prompt_tokens > 391  # 391 image tokens for 644x476
    assert result.timings.generate_s > 0 and result.timings.total_s >= result.timings.generate_s


def test_large_frame_is_scaled_down_and_boxes_scaled_up(fitted_engine):
    """1288x952 exceeds the pixel budget: the model sees 644x476, boxes double on the way back."""
    result = fitted_engine.answer(noise_image(1288, 952, seed=1), "Where is the ball?")
    assert result.model_size == (644, 476)
    ball = result.reasoning.scene_graph.object_by_id("ball.1").box
    assert ball.as_list() == pytest.approx([2 * v for v in BALL])
    assert (
        result.reasoning.scene_graph.image_width,
        result.reasoning.scene_graph.image_height,
    ) == (
        1288,
        952,
    )


def test_numpy_input_equals_pil_input(fitted_engine):
    image = noise_image(336, 252, seed=2)
    a = fitted_engine.answer(image, "Which is bigger?")
    b = fitted_engine.answer(np.asarray(image), "Which is bigger?")
    assert a.generated_token_ids == b.generated_token_ids


def test_streaming_chunks_concatenate_to_the_output(fitted_engine):
    chunks: list[str] = []
    result = fitted_engine.answer(noise_image(224, 168), "Where is it?", on_text=chunks.append)
    assert len(chunks) > 3
    assert "".join(chunks) == result.raw


def test_should_stop_interrupts_generation(tiny_engine):
    seen: list[str] = []
    with pytest.raises(GenerationStopped):
        tiny_engine.answer(
            noise_image(56, 56), "q?", on_text=seen.append, should_stop=lambda: len(seen) >= 2
        )


def test_engine_tokens_equal_the_model_card_snippet(tiny_model_dir):
    """Fidelity: the card's usage code, reproduced verbatim, and the engine emit the same ids.

    The image is 336x252 (already a multiple of 28 within the budget) so the card's stated size
    and the engine's stated size agree; random weights make any difference in the input visible.
    """
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    image = noise_image(336, 252, seed=3)
    question = (
        "Where is the cat relative to the couch? "
        "(A) on top of (B) in front of (C) behind (D) beside"
    )
    max_new = 40

    # --- the model card's "Usage" snippet, model id replaced by the local directory ---
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(tiny_model_dir), torch_dtype="auto", device_map="auto"
    )
    processor = AutoProcessor.from_pretrained(str(tiny_model_dir))
    width, height = image.size
    template = f"""You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue within <think> </think> tags and then provide the final answer. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> (A) cat </answer>.

Image size: {width} x {height}"""  # noqa: E501
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": template + "\n\n" + question},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    generated_ids = model.generate(**inputs, max_new_tokens=max_new)
    # --- end of snippet ---
    card_ids = tuple(generated_ids[0, inputs["input_ids"].shape[1] :].tolist())

    engine = SpatialThinkerEngine(
        EngineConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=max_new)
    )
    engine.load()
    result = engine.answer(image, question)
    assert template + "\n\n" + question == build_prompt(question, width, height)
    assert result.prompt_tokens == inputs["input_ids"].shape[1]
    assert result.generated_token_ids == card_ids
    assert len(card_ids) > 0


def test_unload_frees_the_model(tiny_model_dir):
    engine = SpatialThinkerEngine(EngineConfig(model=str(tiny_model_dir), device="cpu"))
    engine.load()
    assert engine.loaded
    engine.unload()
    assert not engine.loaded
    with pytest.raises(EngineError, match="not loaded"):
        engine.answer(noise_image(56, 56), "q?")


def test_missing_directory_is_a_clear_error_before_anything_loads(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        SpatialThinkerEngine(EngineConfig(model=str(tmp_path / "nope"), device="cpu"))


def test_directory_without_config_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        SpatialThinkerEngine(EngineConfig(model=str(tmp_path), device="cpu")).load()


def test_hub_id_offline_without_cache_is_a_clear_load_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    engine = SpatialThinkerEngine(EngineConfig(device="cpu"))
    with pytest.raises(ModelLoadError, match="OX-PIXL/SpatialThinker-3B.*HF_HUB_OFFLINE"):
        engine.load()


@pytest.mark.parametrize(
    "bad",
    [
        {"dtype": "float8"},
        {"device": "tpu"},
        {"min_pixels": 0},
        {"max_new_tokens": 0},
        {"backend": "onnx"},
        {"model": " "},
    ],
)
def test_bad_options_rejected_at_construction(bad):
    with pytest.raises(ModelLoadError):
        SpatialThinkerEngine(EngineConfig(**bad))


def test_bad_questions_and_images_are_engine_errors(tiny_engine):
    with pytest.raises(EngineError, match="empty"):
        tiny_engine.answer(noise_image(56, 56), "  ")
    with pytest.raises(EngineError, match="HxWx3"):
        tiny_engine.answer(np.zeros((10, 10), np.uint8), "q?")
    with pytest.raises(EngineError, match="aspect ratio"):
        tiny_engine.answer(noise_image(5000, 20), "q?")
