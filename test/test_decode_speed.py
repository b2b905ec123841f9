"""The decode speed paths give the eager path's tokens: prompt lookup (the compiled decode loop
has its own tests, test_decode_loop.py); the prompt token cache gives the processor's inputs.
On the fitted tiny model (a structured output with repeats) and on an input-sensitive random
model (long garbage that changes with the image and question: any drift in cache, positions or
drafts shows).

No timing is asserted anywhere; bench/ measures speed.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.arguments import add_engine_arguments, engine_config_from_args
from spatialthinker_ros.core import decode_loop, decoding
from spatialthinker_ros.core.engine import (
    EngineConfig,
    GenerationStopped,
    ModelLoadError,
    SpatialThinkerEngine,
)
from spatialthinker_ros.core.prompt import PromptStyle, build_prompt
from spatialthinker_ros.testing.forward_counter import ForwardCounter
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

NEW_TOKENS = 64
# (image size, question, choices): two frame sizes, two questions, with and without options.
INPUTS = [
    ((640, 480), "Where is the cube relative to the ball?", ("left", "right")),
    ((336, 252), "Is the cup on the table?", ()),
    ((640, 480), "What is behind the robot?", ()),
]


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def engine_for(model_dir, **options) -> SpatialThinkerEngine:
    options.setdefault("max_new_tokens", NEW_TOKENS)
    engine = SpatialThinkerEngine(EngineConfig(model=str(model_dir), device="cpu", **options))
    engine.load()
    return engine


def answers(engine: SpatialThinkerEngine) -> list[tuple[int, ...]]:
    return [engine.answer(noise_image(*size, seed=i), q, c or None).generated_token_ids
            for i, (size, q, c) in enumerate(INPUTS)]  # fmt: skip




@pytest.fixture(scope="module")
def eager_sensitive(sensitive_model_dir):
    return engine_for(sensitive_model_dir, compile="off")


@pytest.fixture(scope="module")
def sensitive_reference(eager_sensitive):
    ids = answers(eager_sensitive)
    # The check below means something only if the output depends on the input.
    assert len(set(ids)) == len(ids) and all(len(i) == NEW_TOKENS for i in ids)
    return ids


# --------------------------------------------------------------------------- prompt lookup


def test_prompt_lookup_keeps_the_tokens_on_random_weights(sensitive_model_dir,
                                                          sensitive_reference):
    assert answers(engine_for(sensitive_model_dir, prompt_lookup=10)) == sensitive_reference


def test_prompt_lookup_keeps_the_tokens_with_fewer_forward_passes(fitted_model_dir):
    image = noise_image(641, 479)
    plain = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024)
    lookup = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, max_new_tokens=1024,
                        prompt_lookup=10)  # fmt: skip
    passes = {}
    for name, engine in (("plain", plain), ("lookup", lookup)):
        counter = ForwardCounter(engine.backend.model)
        chunks: list[str] = []
        result = engine.answer(image, "Where is the cube?", on_text=chunks.append)
        counter.close()
        assert result.raw == EXAMPLE_OUTPUT and "".join(chunks) == EXAMPLE_OUTPUT
        passes[name] = (counter.count, result.generated_token_ids)
    assert passes["plain"][1] == passes["lookup"][1]
    n = len(passes["plain"][1])
    assert passes["plain"][0] == n  # one pass per token (the prefill's gives the first)
    assert passes["lookup"][0] < n  # drafts from the repeated ids, keys and boxes accepted


def test_prompt_lookup_stops_on_request(sensitive_model_dir):
    engine = engine_for(sensitive_model_dir, prompt_lookup=10)
    seen: list[str] = []
    with pytest.raises(GenerationStopped):
        engine.answer(noise_image(336, 252), "Where?", on_text=seen.append,
                      should_stop=lambda: len(seen) >= 2)  # fmt: skip


# ---------------------------------------------------------------------- prompt token cache


@pytest.mark.parametrize("style", list(PromptStyle))
def test_cached_prompt_tokens_equal_the_processors_inputs(sensitive_model_dir, style):
    engine = engine_for(sensitive_model_dir, prompt_style=style.value)
    backend = engine.backend
    questions = ["Where is it?", "(A) or (B)? 's", "  spaced  ", "naïve café 北京 🙂", "123 x 456"]
    for size in ((640, 480), (336, 252)):  # 640 x 480 is fed (and stated) as 644 x 476
        prepared = engine.prepare_image(noise_image(*size))
        image = prepared.image
        for question in questions:
            prompt = build_prompt(question, *prepared.model_size, ("left", "right"), style)
            got = backend.encode(image, prompt)
            want = backend.processor(text=[backend._chat_text(image, prompt)], images=[image],
                                     return_tensors="pt")  # fmt: skip
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].tolist() == want[key].tolist(), (key, question)
    assert backend.tokens.enabled and len(backend.tokens._fixed) == 2  # one entry per size
    hit = backend.tokens.lookup(prompt, prompt[: prompt.index("Image size")], 1)
    assert hit is None  # another fixed text: not cached, the processor's path


def test_a_cache_that_differs_from_the_processor_turns_itself_off(sensitive_model_dir):
    engine = engine_for(sensitive_model_dir)
    backend = engine.backend
    image = engine.prepare_image(noise_image(336, 252)).image
    prompt = build_prompt("Where?", *image.size)
    reference = backend.encode(image, prompt)
    tokens = backend.tokens
    fixed = prompt[: prompt.index("Where?")]
    tokens._fixed.clear()
    wrong = dict(reference)
    wrong["input_ids"] = reference["input_ids"].clone()
    wrong["input_ids"][0, -1] += 1
    tokens.learn(prompt, fixed, 108, wrong)
    assert not tokens.enabled and "input_ids" in tokens.problem
    assert tokens.lookup(prompt, fixed, 108) is None
    assert backend.encode(image, prompt)["input_ids"].tolist() == reference["input_ids"].tolist()
    assert "differ" in engine.describe()["prompt_token_cache"]


# --------------------------------------------------------------------------------- options


def test_compile_and_prompt_lookup_options():
    assert EngineConfig().compile == "auto" and EngineConfig().prompt_lookup == 0
    # A style given by name is the enum (the prompt and the token cache compare enums).
    assert EngineConfig(prompt_style="paper_eval").prompt_style is PromptStyle.PAPER_EVAL
    with pytest.raises(ModelLoadError, match="compile"):
        SpatialThinkerEngine(EngineConfig(compile="yes"))
    with pytest.raises(ModelLoadError, match="prompt_lookup"):
        SpatialThinkerEngine(EngineConfig(prompt_lookup=-1))
    assert decoding.compile_enabled("auto", "cuda:0") and not decoding.compile_enabled("auto",
                                                                                        "cpu")
    assert decoding.compile_enabled("on", "cpu") and not decoding.compile_enabled("off", "cuda")
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert engine_config_from_args(parser.parse_args(["--compile"])).compile == "on"
    assert engine_config_from_args(parser.parse_args(["--compile", "off"])).compile == "off"
    assert engine_config_from_args(parser.parse_args([])).compile == "auto"
    assert engine_config_from_args(parser.parse_args(["--prompt-lookup", "8"])).prompt_lookup == 8
    assert decoding.static_cache_length(1000, 1024) == 2048
    assert decoding.static_cache_length(1, 1) == decoding.CACHE_ROUNDING


# ------------------------------------------------------------------------ compile failure


def test_a_failed_compile_falls_back_to_eager_on_auto_and_fails_on_on(fitted_model_dir,
                                                                      monkeypatch):
    """A real torch.compile failure (an unknown mode) during the warm-up. `auto` is made to
    mean on here (off on the CPU otherwise)."""
    monkeypatch.setattr(decode_loop, "compile_mode", lambda device: "no-such-mode")
    monkeypatch.setattr(decoding, "compile_enabled", lambda setting, device: setting != "off")
    auto = engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, compile="auto",
                      max_new_tokens=1024)
    assert auto.backend.loop is None
    note = auto.describe()["compile"]
    assert note.startswith("off (compiling failed: ") and "no-such-mode" in note
    assert auto.answer(noise_image(641, 479), "Where?").raw == EXAMPLE_OUTPUT
    assert auto.describe()["last_decode"].startswith("generate (off (compiling failed")
    with pytest.raises(ModelLoadError, match="compiling the decode step failed.*no-such-mode"):
        engine_for(fitted_model_dir, max_pixels=FITTED_MAX_PIXELS, compile="on")
