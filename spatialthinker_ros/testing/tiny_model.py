"""Build a tiny, real Qwen2.5-VL model directory offline (tests, benchmarks, demos).

The directory loads through the same `AutoProcessor` / `Qwen2_5_VLForConditionalGeneration
.from_pretrained` path as `OX-PIXL/SpatialThinker-3B`. Random weights emit garbage; `fit_text`
trains the model for a few hundred steps so that it answers every prompt with that text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# Qwen2.5-VL's special tokens, in Qwen's order (ids 151643.. in the real vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL / Qwen2.5-VL chat template (default system prompt, image placeholder before text).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# vLLM's CPU attention takes head sizes 32, 64, 80, ... only (not the default 16): a model for
# a vLLM server has this many text attention heads (64 / 2 = head size 32, one KV head).
VLLM_TEXT_HEADS = 2

# Largest image area the fitted model was trained on: keep the engine's max_pixels at this so
# its output stays the fitted text (644x476 = what a 640x480 frame becomes).
FITTED_MAX_PIXELS = 644 * 476

# A SpatialThinker-style answer for a 640x480 frame ("Image size" stated in the prompt).
EXAMPLE_OUTPUT = (
    "<observe>\nA red cube stands left of a blue ball on a grey floor.\n</observe>\n"
    "<scene>\n{\n"
    '  "objects": [\n'
    '    {"id": "cube.1", "bbox": [64, 120, 256, 360]},\n'
    '    {"id": "ball.1", "bbox": [384, 180, 576, 420]}\n'
    "  ],\n"
    '  "relationships": [\n'
    '    {"subject": "cube.1", "predicate": "left of", "object": "ball.1"}\n'
    "  ]\n}\n</scene>\n"
    "<think>\nThe cube box ends at x=256 and the ball box starts at x=384, so the cube is left "
    "of the ball.\n</think>\n"
    "<answer> (A) left </answer>"
)


def _training_corpus() -> list[str]:
    from ..core.prompt import INSTRUCTION, PAPER_EVAL_TEMPLATE

    text = [INSTRUCTION, PAPER_EVAL_TEMPLATE, EXAMPLE_OUTPUT, "You are a helpful assistant."]
    text += [f"Image size: {w} x {h}" for w in range(0, 2000, 37) for h in (476, 480, 1080)]
    text += ["Where is the cube relative to the ball? (A) left (B) right (C) above (D) below"]
    return text


def _build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    bpe.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension over (time, height, width), like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _config(tokenizer, text_width: int, text_layers: int, vision_width: int, vision_layers: int,
            text_heads: int | None = None):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = text_heads or max(1, text_width // 16)
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_width,
            "intermediate_size": text_width * 2,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": _mrope_section(text_width // heads),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": vision_layers,
            "hidden_size": vision_width,
            "intermediate_size": vision_width * 2,
            "num_heads": max(1, vision_width // 16),
            "out_hidden_size": text_width,
            "fullatt_block_indexes": [vision_layers - 1],
            "window_size": 112,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _fit(model, processor, text: str, steps: int, seed: int) -> None:
    """Teach the model to answer any prompt with `text` (teacher forcing on varied prompts).

    Reliable for images the engine feeds at up to about 644x476 (keep `max_pixels` near that)."""
    import numpy as np
    import torch
    from PIL import Image

    from ..core.prompt import build_prompt

    torch.manual_seed(seed)
    # Zero and freeze the vision merger's output so image content cannot change the answer.
    last = model.model.visual.merger.mlp[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    last.requires_grad_(False)

    # Many prompts of varied image size, wording, length and options, so that the answer cannot
    # depend on the prompt; small images keep it cheap.
    rng = np.random.default_rng(seed)
    sizes = [(56, 56), (84, 56), (56, 112), (112, 84), (224, 168), (336, 252), (644, 476)]
    words = (
        "cube ball cup chair robot door table cat red blue left right near far the of is".split()
    )
    examples = []
    for i in range(28):
        w, h = sizes[i % len(sizes)]
        question = " ".join(rng.choice(words, int(rng.integers(2, 16)))).capitalize() + "?"
        choices = list(rng.choice(words, int(rng.integers(2, 5)))) if i % 2 else None
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        prompt = build_prompt(question, w, h, choices)
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[chat + text + "<|im_end|>"], images=[image], return_tensors="pt")
        n_prompt = len(processor(text=[chat], images=[image], return_tensors="pt")["input_ids"][0])
        labels = inputs["input_ids"].clone()
        labels[:, :n_prompt] = -100
        examples.append((inputs, labels))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=1e-4)
    model.train()
    for step in range(steps):
        inputs, labels = examples[step % len(examples)]
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 600,
    text_width: int = 64,
    text_layers: int = 2,
    vision_width: int = 32,
    vision_layers: int = 2,
    fit_text: str | None = None,
    fit_steps: int = 800,
    init_std: float | None = None,
    text_heads: int | None = None,
) -> Path:
    """Write a loadable Qwen2.5-VL model + processor to `out_dir` and return the path.

    `init_std`: redraw every weight matrix at this std. At the default init (0.02, tied
    embeddings) the residual stream dominates and the model repeats one token whatever the
    image or question; at 0.2 its long garbage output depends on both (what token-identity
    tests need). `text_heads`: attention heads of the text model (default: head size 16;
    VLLM_TEXT_HEADS for a vLLM server)."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(
        _config(tokenizer, text_width, text_layers, vision_width, vision_layers, text_heads)
    ).eval()
    if init_std is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, init_std, generator=generator)
    if fit_text is not None:
        _fit(model, processor, fit_text, fit_steps, seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # Like the real model's generation_config.json: only eos and pad, so decoding is greedy.
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tiny_model.json").write_text(json.dumps({
        "seed": seed, "fit_text": fit_text, "fit_steps": fit_steps if fit_text else 0,
        "init_std": init_std,
    }))
    return out


def cached_tiny_model(cache_dir: str | Path, **kwargs) -> Path:
    """`build_tiny_model(**kwargs)` built once per cache key (this module's and the prompt's source,
    the torch/transformers versions and the arguments), so test sessions share one fit."""
    import hashlib
    import os
    import shutil
    import tempfile

    import torch
    import transformers

    from ..core import prompt

    # The builder's source and the prompt texts it trains on (not the rest of prompt.py, so
    # unrelated edits there do not refit every cached model).
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update((prompt.INSTRUCTION + prompt.PAPER_EVAL_TEMPLATE).encode())
    digest.update(
        f"{torch.__version__} {transformers.__version__} {sorted(kwargs.items())}".encode()
    )
    target = Path(cache_dir) / digest.hexdigest()[:16]
    if (target / "tiny_model.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        build_tiny_model(staging, **kwargs)
        os.replace(staging, target)  # atomic; a concurrent builder that won first is kept
    except OSError:
        if not (target / "tiny_model.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--fit", action="store_true", help="fit the model to EXAMPLE_OUTPUT")
    args = parser.parse_args(argv)
    build_tiny_model(args.out_dir, fit_text=EXAMPLE_OUTPUT if args.fit else None)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
