"""answer_many shares one prefilled image prefix across questions and must equal answer() per
question: same greedy tokens, on random weights (long garbage outputs: any drift in positions or
cache shows) and on the fitted model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatialthinker_ros.core import prefix_cache
from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
from spatialthinker_ros.core.prompt import build_prompt
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

QUESTIONS = [
    "Where is the cube relative to the ball?",
    ("Is the cup on the table?", ["yes", "no"]),
    "What?",
    (
        "Which object is closest to the camera, and how far is it from the door on the left?",
        ["the red cube", "the blue ball", "the chair", "the door"],
    ),
]
TINY_NEW_TOKENS = 96


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def as_pair(item) -> tuple[str, tuple[str, ...]]:
    return (item, ()) if isinstance(item, str) else (item[0], tuple(item[1]))


def load_engine(model_dir, **options) -> SpatialThinkerEngine:
    engine = SpatialThinkerEngine(EngineConfig(model=str(model_dir), device="cpu", **options))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def tiny_engine(sensitive_model_dir):
    return load_engine(sensitive_model_dir, max_new_tokens=TINY_NEW_TOKENS)


@pytest.fixture(scope="module")
def fitted_engine(fitted_model_dir):
    return load_engine(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS)


@pytest.fixture(scope="module")
def tiny_image():
    return noise_image(640, 480, seed=3)


@pytest.fixture(scope="module")
def tiny_alone(tiny_engine, tiny_image):
    """answer() for each question on its own: the reference."""
    return [tiny_engine.answer(tiny_image, q, c or None) for q, c in map(as_pair, QUESTIONS)]


def assert_same(many, alone) -> None:
    assert len(many) == len(alone)
    for m, a in zip(many, alone, strict=True):
        assert (m.question, m.choices) == (a.question, a.choices)
        assert m.generated_token_ids == a.generated_token_ids
        assert m.raw == a.raw
        assert m.generated_tokens == a.generated_tokens == len(a.generated_token_ids)
        assert m.prompt_tokens == a.prompt_tokens
        assert (m.source_size, m.model_size) == (a.source_size, a.model_size)


@pytest.mark.parametrize("picks", [[0], [2, 3], [0, 1, 2, 3], [3, 1, 0, 2]])
def test_random_weights_answer_many_equals_answer(tiny_engine, tiny_image, tiny_alone, picks):
    many = tiny_engine.answer_many(tiny_image, [QUESTIONS[i] for i in picks])
    assert_same(many, [tiny_alone[i] for i in picks])
    # Long garbage outputs: a cache or rotary-position error would show as different ids.
    assert all(r.generated_tokens > 40 for r in many)
    assert all(r.timings.generate_s > 0 for r in many)


def test_default_tiny_model_answer_many_equals_answer(tiny_model_dir, tiny_image):
    engine = load_engine(tiny_model_dir, max_new_tokens=32)
    many = engine.answer_many(tiny_image, QUESTIONS)
    alone = [engine.answer(tiny_image, q, c or None) for q, c in map(as_pair, QUESTIONS)]
    assert_same(many, alone)


def test_results_carry_their_question_and_choices(tiny_engine, tiny_image, tiny_alone):
    many = tiny_engine.answer_many(tiny_image, QUESTIONS)
    assert [(r.question, r.choices) for r in many] == [as_pair(q) for q in QUESTIONS]
    # Different questions give different garbage: the right continuation went to the right one.
    assert len({r.generated_token_ids for r in many}) == len(QUESTIONS)


def test_fitted_model_answer_many_equals_answer(fitted_engine):
    image = np.asarray(noise_image(641, 479, seed=5))
    questions = [QUESTIONS[1], "What is left of the ball?", "Where is the ball?"]
    many = fitted_engine.answer_many(image, questions)
    alone = [fitted_engine.answer(image, q, c or None) for q, c in map(as_pair, questions)]
    assert_same(many, alone)
    assert all(r.raw == EXAMPLE_OUTPUT for r in many)
    assert [r.reasoning.answer.option for r in many] == ["A", "A", "A"]
    assert [r.choices for r in many] == [("yes", "no"), (), ()]
    assert many[0].reasoning.scene_graph.image_width == 641


def test_encoded_ids_equal_the_processors_and_the_prefix_holds_the_image(tiny_engine, tiny_image):
    backend = tiny_engine.backend
    prepared = tiny_engine.prepare_image(tiny_image)
    prompts = [build_prompt(q, *prepared.model_size, c or None) for q, c in map(as_pair, QUESTIONS)]
    encoded = prefix_cache.encode_prompts(backend.model, backend.processor, prepared.image, prompts)
    for ids, prompt in zip(encoded.input_ids, prompts, strict=True):
        assert ids.tolist() == backend.encode(prepared.image, prompt)["input_ids"][0].tolist()
    n = encoded.shared_length
    first = encoded.input_ids[0].tolist()
    vision_end = first.index(backend.model.config.vision_end_token_id)
    assert vision_end < n < min(len(i) for i in encoded.input_ids)
    assert all(i[:n].tolist() == first[:n] for i in encoded.input_ids)
    assert len({i[n].item() for i in encoded.input_ids}) > 1  # the longest shared run


def test_a_wrong_rotary_offset_changes_the_output(tiny_engine, tiny_image, tiny_alone):
    """The equality tests can fail: continuing with a zero offset (plain 1-D positions after the
    image, the classic prefix-reuse bug) gives different tokens than the uncached run."""
    backend = tiny_engine.backend
    prepared = tiny_engine.prepare_image(tiny_image)
    prompts = [build_prompt(q, *prepared.model_size, c or None) for q, c in map(as_pair, QUESTIONS)]
    encoded = prefix_cache.encode_prompts(backend.model, backend.processor, prepared.image, prompts)
    prefix = prefix_cache.prefill_prefix(backend.model, encoded)
    assert prefix.rope_deltas.item() < 0  # the image's grid compresses positions

    right = prefix_cache.generate_from_prefix(
        backend.model, prefix, encoded.input_ids[0], max_new_tokens=TINY_NEW_TOKENS
    )
    assert tuple(right.tolist()) == tiny_alone[0].generated_token_ids
    prefix.rope_deltas = torch.zeros_like(prefix.rope_deltas)
    wrong = prefix_cache.generate_from_prefix(
        backend.model, prefix, encoded.input_ids[0], max_new_tokens=TINY_NEW_TOKENS
    )
    assert tuple(wrong.tolist()) != tiny_alone[0].generated_token_ids


def test_batched_continuation_equals_answer(tiny_engine, tiny_image, tiny_alone):
    """batched=True: the questions decode as one batch over the shared cache, padding between
    the prefix and each question; on the CPU the tokens equal answer()'s."""
    backend = tiny_engine.backend
    prepared = tiny_engine.prepare_image(tiny_image)
    prompts = [build_prompt(q, *prepared.model_size, c or None) for q, c in map(as_pair, QUESTIONS)]
    outputs = prefix_cache.generate_many(
        backend.model,
        backend.processor,
        prepared.image,
        prompts,
        batched=True,
        max_new_tokens=TINY_NEW_TOKENS,
    )
    assert [o.token_ids for o in outputs] == [a.generated_token_ids for a in tiny_alone]
    assert [o.prompt_tokens for o in outputs] == [a.prompt_tokens for a in tiny_alone]
    assert len({o.prompt_tokens for o in outputs}) > 1  # the padding path ran


def test_shareable_length_rules():
    vision_end = 9
    assert prefix_cache.common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert prefix_cache.common_prefix_length([]) == 0
    # Identical prompts: each keeps one token of its own for generate to continue from.
    assert prefix_cache.shareable_length([[1, 9, 5, 6], [1, 9, 5, 6]], vision_end) == 3
    assert prefix_cache.shareable_length([[1, 9, 5, 6], [1, 9, 7]], vision_end) == 2
    # The shared run ends before the vision block closes: nothing is shared (per-question path).
    assert prefix_cache.shareable_length([[1, 2, 9, 5], [1, 3, 9, 5]], vision_end) == 0
    assert prefix_cache.shareable_length([], vision_end) == 0


def test_empty_and_single_question(tiny_engine, tiny_image, tiny_alone):
    assert tiny_engine.answer_many(tiny_image, []) == []
    [one] = tiny_engine.answer_many(tiny_image, [QUESTIONS[0]])
    assert one.generated_token_ids == tiny_alone[0].generated_token_ids


@pytest.mark.parametrize("batched", [False, True])
def test_one_deadline_for_all_questions_in_process(sensitive_model_dir, tiny_image, batched):
    """Issue 21: timeout_s bounds the whole answer_many call on the in-process backend too
    (before, generate_many had no stop at all: 3 x 4096 tokens ran to the end)."""
    from spatialthinker_ros.core.engine import BackendTimeout

    engine = load_engine(sensitive_model_dir, max_new_tokens=4096, timeout_s=0.5,
                         batch_questions=batched)  # fmt: skip
    with pytest.raises(BackendTimeout, match="the model did not answer within 0.5 s"):
        engine.answer_many(tiny_image, QUESTIONS[:3])


def test_answer_many_polls_one_stop_for_every_question(tiny_engine, tiny_image):
    """The caller's should_stop (Ctrl-C in replay) reaches every question: once it fires, no
    question generates further."""
    from spatialthinker_ros.core.engine import GenerationStopped

    polls: list[int] = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) >= 5

    with pytest.raises(GenerationStopped):
        tiny_engine.answer_many(tiny_image, QUESTIONS[:3], should_stop=should_stop)
    assert len(polls) == 5  # the stop stays set: the later questions never ask again
