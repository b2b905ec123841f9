"""Weight-only int8 / int4 quantization (`quantization` option, core/quantization.py), for real on
the CPU: torchao's kernels, the engine's from_pretrained path, the tiny models.

The node's lifecycle with a quantized model: test/ros/test_node_quantization.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
from spatialthinker_ros.core.types import ModelLoadError
from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

pytest.importorskip("torchao", reason="the quantization tests need torchao (.[quant])")

from spatialthinker_ros.core import quantization  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTION, CHOICES = "Where is the cube relative to the ball?", ("left", "right")


def frame(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def engine(model_dir: Path, **options) -> SpatialThinkerEngine:
    e = SpatialThinkerEngine(EngineConfig(model=str(model_dir), device="cpu",
                                          max_pixels=FITTED_MAX_PIXELS, **options))  # fmt: skip
    e.load()
    return e


def summary(result) -> tuple:
    r = result.reasoning
    return (r.answer.option if r.answer else None, r.answer.matched_choice if r.answer else None,
            [(o.id, o.label, o.box) for o in r.scene_graph.objects] if r.scene_graph else None)


@pytest.fixture(scope="module")
def int8_engine(fitted_model_dir) -> SpatialThinkerEngine:
    return engine(fitted_model_dir, quantization="int8")


def decoder_linears(e: SpatialThinkerEngine) -> dict:
    lm = e.backend.model.model.language_model
    return {n: m for n, m in lm.named_modules()
            if n.startswith("layers.") and type(m).__name__ == "Linear"}  # fmt: skip


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_each_mode_loads_through_from_pretrained_and_answers(fitted_model_dir, mode) -> None:
    e = engine(fitted_model_dir, quantization=mode)
    model = e.backend.model
    linears = decoder_linears(e)
    assert linears and all(quantization.is_quantized(m.weight) for m in linears.values())
    # Vision tower, embedding and the (tied) output head stay in the model dtype.
    assert not any(quantization.is_quantized(p) for p in model.model.visual.parameters())
    assert not quantization.is_quantized(model.lm_head.weight)
    assert model.lm_head.weight.dtype == model.model.language_model.embed_tokens.weight.dtype
    assert e.describe()["quantization"].startswith(f"{mode} weight-only")
    result = e.answer(frame(), QUESTION, CHOICES)
    assert result.generated_tokens > 0 and result.raw
    # The decoder linears really take less memory than the same layers in fp32.
    stored = sum(quantization.module_bytes(m) for m in linears.values())
    plain = sum(m.in_features * m.out_features * 4 for m in linears.values())
    assert stored < plain * (0.3 if mode == "int8" else 0.2)


def test_int8_gives_the_fp32_answer_and_boxes_on_the_fitted_model(fitted_engine,
                                                                   int8_engine) -> None:
    for seed in (0, 1):
        reference = fitted_engine.answer(frame(seed), QUESTION, CHOICES)
        quantized = int8_engine.answer(frame(seed), QUESTION, CHOICES)
        assert summary(reference)[0] == "A"
        assert summary(quantized) == summary(reference)


def test_agreement_with_fp32_on_the_input_sensitive_model_is_reported(sensitive_model_dir,
                                                                      record_property) -> None:
    """Reported, not asserted: random weights at std 0.2 have narrow logit margins, so any
    rounding flips tokens; the real model's margins are what the eval command measures."""
    ids = {}
    for mode in ("none", "int8", "int4"):
        e = engine(sensitive_model_dir, quantization=mode, max_new_tokens=200)
        ids[mode] = e.answer(frame(3), QUESTION, CHOICES).generated_token_ids
    reference = ids["none"]
    assert len(set(reference)) > 5  # the reference is input-sensitive garbage, not one token
    for mode in ("int8", "int4"):
        same = sum(a == b for a, b in zip(ids[mode], reference, strict=False))
        prefix = next((i for i, (a, b) in enumerate(zip(ids[mode], reference, strict=False))
                       if a != b), min(len(ids[mode]), len(reference)))  # fmt: skip
        line = (f"{mode}: {same}/{len(reference)} greedy tokens equal fp32's position by "
                f"position ({100 * same / len(reference):.0f}%), identical prefix {prefix}")
        record_property(f"agreement_{mode}", line)
        print(line)


def test_composes_with_compile_stop_after_and_answer_many(fitted_model_dir, int8_engine) -> None:
    reference = int8_engine.answer(frame(), QUESTION, CHOICES)
    compiled = engine(fitted_model_dir, quantization="int8", compile="on")
    assert compiled.describe()["compile"].startswith("on")
    assert compiled.answer(frame(), QUESTION, CHOICES).generated_token_ids == (
        reference.generated_token_ids)
    stopped = int8_engine.answer(frame(), QUESTION, CHOICES, stop_after="scene_graph")
    assert stopped.reasoning.answer is None or not stopped.reasoning.answer.option
    assert summary(stopped)[2] == summary(reference)[2]
    assert stopped.generated_tokens < reference.generated_tokens
    questions = [(QUESTION, CHOICES), ("Is the cube left of the ball?", ("yes", "no"))]
    many = int8_engine.answer_many(frame(), questions)
    one_by_one = [int8_engine.answer(frame(), q, c) for q, c in questions]
    assert [r.generated_token_ids for r in many] == [r.generated_token_ids for r in one_by_one]


def test_a_kernel_the_device_lacks_is_one_line_naming_the_mode() -> None:
    """tinygemm (int4 on CUDA) run for real where it has no kernel: an fp32 layer on the CPU."""
    import torch

    with pytest.raises(ModelLoadError) as info:
        quantization.probe("int4", "cpu", torch.float32,
                           config=quantization.config_for("int4", "cuda"))  # fmt: skip
    message = str(info.value)
    assert "\n" not in message and message.startswith("quantization int4 is not available")
    assert "bfloat16" in message


def test_unloaded_library_fails_the_cli_with_one_line(fitted_model_dir, tmp_path) -> None:
    """A Python where torchao is absent (`sys.modules["torchao"] = None` at start-up, the way
    Python marks a module as not importable; transformers then sees no torchao either): the CLI
    exits 2 with one line, before any answer; never bf16 silently."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torchao'] = None\n")
    image = tmp_path / "frame.png"
    frame().save(image)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", "ask", str(image), QUESTION,
         "--model", str(fitted_model_dir), "--device", "cpu", "--quantization", "int8",
         "--max-pixels", str(FITTED_MAX_PIXELS)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert errors == [errors[-1]] and "quantization int8 is not available on cpu" in errors[0]
    assert "torchao is not installed" in errors[0] and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_openai_backend_refuses_quantization_in_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", "ask", "x.png", QUESTION,
         "--backend", "openai", "--quantization", "int4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "quantization applies to the in-process" in run.stderr


def test_int4_group_size_divides_every_qwen_shape() -> None:
    for in_features in (2048, 11008, 64, 128):  # Qwen2.5-VL-3B, the tiny models
        size = quantization.int4_group_size(in_features)
        assert size is not None and in_features % size == 0
    assert quantization.int4_group_size(2048) == quantization.int4_group_size(11008) == 128
    assert quantization.int4_group_size(40) is None


def test_option_values_and_the_eval_settings_record() -> None:
    from spatialthinker_ros.evaluation.runner import eval_settings

    assert any("quantization must be one of none, int8, int4" in p
               for p in EngineConfig(quantization="int3").problems())  # fmt: skip
    # Recorded only when on: results files from before the option still resume.
    assert "quantization" not in eval_settings(EngineConfig())
    assert eval_settings(EngineConfig(quantization="int4"))["quantization"] == "int4"
