"""The real Qwen2.5-VL-3B architecture (random weights, bf16) on a CUDA device: the model card's
snippet against the engine, side by side in one run.

No download: the Qwen2.5-VL-3B-Instruct configuration is written out below; the tokenizer is
the tiny offline one (`testing.tiny_model`, a byte-level BPE with Qwen's special tokens) and the
model keeps the real 151,936-row vocabulary. Random weights emit garbage and never close
`</scene>`, so every run generates a fixed number of tokens (min_new_tokens = max_new_tokens) and
"time to scene graph" is the time to SCENE_TOKENS tokens, the length of a typical `<observe>` +
`<scene>` opening (a proxy, not a measured `</scene>`).

Per path, min / median over repeats:
- time to first token (prefill incl. vision tower: generate with 1 new token);
- time to scene graph (SCENE_TOKENS new tokens);
- decode tokens/s at batch 1 ((N - 1) / (t(N) - t(1)), N = --out-len);
- peak CUDA memory allocated during the path's runs: all (both resident models' weights
  included: the card's copy and the engine's) / added above what was allocated before them.
Paths: `card` (the card's usage code), `engine` (engine.answer: sdpa, dynamic cache),
`engine static+compile` (generate(cache_implementation="static"), which transformers compiles
on CUDA: the forward pass goes through torch.compile, "reduce-overhead" mode), then 4 questions
on one frame: card x4, engine.answer_many (shared prefix) and the batched variant, with how
many of their outputs equal the card's token for token (bf16 kernels may round a split or
batched prefill differently from the card's single pass).

    PYTHONPATH=. .venv/bin/python bench/gpu.py                 # CUDA: about 5-8 minutes on an H100
    PYTHONPATH=. .venv/bin/python bench/gpu.py --cpu-smoke     # tiny config on the CPU: code check
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from _common import Stats, card_snippet, machine_line, noise_rgb, print_table

SCENE_TOKENS = 150  # tokens of a typical output up to `</scene>` (README example: ~120-170)

# Qwen2.5-VL-3B-Instruct's config.json, less the token ids (they come from our tokenizer).
QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": [16, 24, 24],
    },
}
QWEN25_VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "window_size": 112,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "tokens_per_second": 2,
    "hidden_act": "silu",
    "in_channels": 3,
}
# --cpu-smoke: the same code on a model small enough for a 2-core CPU.
SMOKE_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                  "mrope_section": [2, 3, 3]}}  # fmt: skip
SMOKE_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": 64, "fullatt_block_indexes": [1]}  # fmt: skip

QUESTIONS = [
    ("Where is the cube relative to the ball?", ("left", "right", "above", "below")),
    ("Is the cup on the table?", ("yes", "no")),
    ("Which object is closer to the camera?", ("the cube", "the ball")),
    ("Can the arm reach the mug?", ("yes", "no")),
]


def build_model_dir(out: Path, smoke: bool, device: str, dtype) -> Path:
    """Tiny tokenizer + processor (build_tiny_model), then the 3B architecture's random weights
    written over the tiny model's, straight from the device."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    from spatialthinker_ros.testing.tiny_model import SPECIAL_TOKENS, build_tiny_model

    build_tiny_model(out)
    for stale in list(out.glob("*.safetensors")) + list(out.glob("*.safetensors.index.json")):
        stale.unlink()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(QWEN25_VL_3B_TEXT, **(SMOKE_TEXT if smoke else {}))
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN25_VL_3B_VISION, **(SMOKE_VISION if smoke else {})),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(out)
    del model
    return out


class Clock:
    """Wall time with the device synchronised, and the peak memory over a block."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda = cuda
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, call) -> float:
        self.sync()
        t0 = time.perf_counter()
        call()
        self.sync()
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def peak(self, into: dict, key: str):
        """Peak CUDA memory allocated in the block: (total GiB, GiB above the block's start)."""
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
            start = self.torch.cuda.memory_allocated()
        yield
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated()
            into[key] = f"{peak / 2**30:.2f} / {(peak - start) / 2**30:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--out-len", type=int, default=512, help="N for the decode rate")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the static+compile path")
    parser.add_argument("--model-dir", help="reuse a directory written by an earlier run")
    args = parser.parse_args()

    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from spatialthinker_ros.core import prefix_cache
    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.core.prompt import question_text

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        parser.error("no CUDA device: run with --cpu-smoke to check the code on the CPU")
    device, dtype_name = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    dtype = getattr(torch, dtype_name)
    if args.cpu_smoke:
        args.out_len, args.repeats = min(args.out_len, 24), 1
    scene_tokens = min(SCENE_TOKENS, args.out_len)
    clock = Clock(cuda)

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    if args.model_dir and (Path(args.model_dir) / "config.json").exists():
        model_dir = Path(args.model_dir)
    else:
        model_dir = Path(args.model_dir or tmp.name)
        build_model_dir(model_dir, args.cpu_smoke, device, dtype)
    build_s = time.perf_counter() - t0

    config = EngineConfig(model=str(model_dir), device=device, dtype=dtype_name,
                          attn_implementation="sdpa", max_new_tokens=args.out_len)  # fmt: skip
    engine = SpatialThinkerEngine(config)
    engine.load()
    model = engine.backend.model
    n_params = sum(p.numel() for p in model.parameters())
    card_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(model_dir), torch_dtype="auto", device_map="auto"
    )
    card_processor = AutoProcessor.from_pretrained(str(model_dir))
    image = engine.prepare_image(noise_rgb(640, 480, seed=2)).image  # 644x476 for both sides
    question, choices = QUESTIONS[0]

    def engine_with(n: int) -> SpatialThinkerEngine:
        """The loaded engine with another max_new_tokens (same backend, same weights)."""
        model.generation_config.min_new_tokens = n
        return SpatialThinkerEngine(dataclasses.replace(config, max_new_tokens=n), engine.backend)

    def card(n: int):
        text = question_text(question, choices)
        return lambda: card_snippet(card_model, card_processor, image, text, n)

    def engine_answer(n: int):
        e = engine_with(n)
        return lambda: e.answer(image, question, choices)

    paths = {"card": card, "engine (sdpa)": engine_answer}
    if not args.no_compile:
        paths["engine static" + ("+compile" if cuda else " (no compile on CPU)")] = engine_answer

    rows, peaks = [], {}
    for name, make in paths.items():
        static = name.startswith("engine static")
        model.generation_config.cache_implementation = "static" if static else None
        lengths = sorted({1, scene_tokens, args.out_len})
        times = {n: [] for n in lengths}
        with clock.peak(peaks, name):
            for n in lengths:
                clock.time(make(n))  # warm-up (and compilation for the static path)
            for _ in range(args.repeats):
                for n in lengths:
                    times[n].append(clock.time(make(n)))
        first, scene, full = (Stats(tuple(times[n])) for n in (1, scene_tokens, args.out_len))
        rate = (args.out_len - 1) / max(full.min - first.min, 1e-9)
        rows.append([name, f"{first.min * 1e3:.0f} / {first.median * 1e3:.0f}",
                     f"{scene.min:.3f} / {scene.median:.3f}", f"{full.min:.3f}",
                     f"{rate:.1f}", peaks.get(name, "-")])  # fmt: skip
    model.generation_config.cache_implementation = None

    # Four questions on one frame, scene-graph length each.
    n = scene_tokens
    many_engine = engine_with(n)
    prompts = [many_engine.prompt_for(engine.prepare_image(image), q, c) for q, c in QUESTIONS]

    def card_x4() -> list[list[int]]:
        return [card_snippet(card_model, card_processor, image, question_text(q, c), n)
                for q, c in QUESTIONS]  # fmt: skip

    def answer_many() -> list[list[int]]:
        return [list(r.generated_token_ids) for r in many_engine.answer_many(image, QUESTIONS)]

    def batched() -> list[list[int]]:
        outputs = prefix_cache.generate_many(
            model, engine.backend.processor, image, prompts, batched=True,
            max_new_tokens=n, min_new_tokens=n)  # fmt: skip
        return [list(o.token_ids) for o in outputs]

    many = {"card x4": card_x4, "engine.answer_many": answer_many, "prefix_cache batched": batched}
    many_rows, card4, card_ids = [], None, None
    for name, call in many.items():
        with clock.peak(peaks, name):
            ids = call()
            stats = Stats(tuple(clock.time(call) for _ in range(args.repeats)))
        card4 = card4 if card4 is not None else stats
        card_ids = card_ids if card_ids is not None else ids
        same = sum(a == b for a, b in zip(ids, card_ids, strict=True))
        many_rows.append([name, f"{stats.min:.3f}", f"{stats.median:.3f}",
                          f"{stats.min / card4.min:.2f}", f"{same}/{len(ids)}",
                          peaks.get(name, "-")])  # fmt: skip
    distinct = len({t for row in card_ids for t in row})

    print(f"# gpu  {time.strftime('%Y-%m-%d %H:%M')}  {machine_line()}")
    print(
        f"model: Qwen2.5-VL-3B architecture{' (SMOKE: tiny config)' if args.cpu_smoke else ''}, "
        f"random weights, {n_params / 1e9:.3f} B params, {dtype_name}, {device}, sdpa; image "
        f"644x476; N = {args.out_len}; scene graph = {scene_tokens} tokens (proxy); "
        f"{args.repeats} repeats; model built/written in {build_s:.0f} s"
    )
    print_table(["path", "first token ms (min / median)", "scene graph s (min / median)",
                 f"{args.out_len} tokens s (min)", "decode tok/s", "peak GiB (all / added)"],
                rows)  # fmt: skip
    print()
    print(f"4 questions on one frame, {n} tokens each")
    print_table(["path", "min s", "median s", "vs card (min)", "same tokens as card",
                 "peak GiB (all / added)"], many_rows)  # fmt: skip
    print(f"(the card's 4 outputs hold {distinct} distinct token ids: with 1 or 2, random weights "
          "just repeat a token and the token check says little)")
    if not cuda:
        print("(CPU smoke run: the figures say nothing about a GPU; peak memory is CUDA-only)")
    shutil.rmtree(tmp.name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
