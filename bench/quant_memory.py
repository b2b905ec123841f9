"""Memory of the real Qwen2.5-VL-3B architecture per quantization mode, measured on the CPU.

The model is built from its configuration (`gpu.py`'s, offline) with random bf16 weights and
quantized by the engine's own `core.quantization.quantize_language_model`. Per mode (none, int8,
int4) it reports the bytes really stored (torchao tensors: packed data + scales + zero points):
the language model's decoder linears, the whole language model, the whole model, and what one
decode step reads (decoder layers with their norms, the final norm, one embedding row and the
full `lm_head`, which is tied to the embedding). Then the KV cache for a 640x480 frame's prompt +
`max_new_tokens` (layers x 2 x KV heads x head_dim x tokens x 2 bytes) and the bandwidth ceiling
and fit on each Jetson Orin module (`JETSONS`).

int4 on the CPU is torchao's CPU packing (`Int4OpaqueTensor`); tinygemm's CUDA packing stores
the same bytes (int4 pairs in int32 tiles, n x k / 2 bytes, plus bf16 scale-and-zero of k/128 x n
x 2). Peak RSS stays near the bf16 model's (~8 GB): built once for none + int8 (quantized in
place), rebuilt for int4.

    PYTHONPATH=. python bench/quant_memory.py            # ~3-6 min on 2 cores, ~8 GB RSS
"""

from __future__ import annotations

import gc
import resource
import sys
import time

import _common  # noqa: F401 - puts the repository on sys.path, HF_HUB_OFFLINE
from gpu import QWEN25_VL_3B_TEXT, QWEN25_VL_3B_VISION

NEW_TOKENS = 1024
RUNTIME_GB = 1.0  # CUDA context, allocator slack, prefill activations of one 640x480 frame
# (module, memory GB, bandwidth GB/s)
# (bandwidths: NVIDIA's Jetson Orin module data sheet / technical specifications; bench/README.md)
RESERVE_GB = 3.0  # our assumption: Ubuntu (no desktop), the ROS 2 stack and a camera driver
JETSONS = (
    ("Orin Nano 8GB", 8, 68.0),
    ("Orin Nano Super 8GB", 8, 102.0),
    ("Orin NX 16GB", 16, 102.4),
    ("AGX Orin 32GB", 32, 204.8),
    ("AGX Orin 64GB", 64, 204.8),
)
# Qwen2.5-VL's own special-token ids (the config needs some; the tokenizer is not used here).
TOKEN_IDS = {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}
VISION_IDS = {"image_token_id": 151655, "video_token_id": 151656,
              "vision_start_token_id": 151652, "vision_end_token_id": 151653}  # fmt: skip


def rss_gb() -> tuple[float, float]:
    """(current, peak) resident set size in GB."""
    current = 0.0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024 / 1e9
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def build():
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=dict(QWEN25_VL_3B_TEXT, **TOKEN_IDS),
                              vision_config=QWEN25_VL_3B_VISION, tie_word_embeddings=True,
                              **VISION_IDS)  # fmt: skip
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)


def measure(model) -> dict[str, int]:
    from spatialthinker_ros.core.quantization import module_bytes

    lm = model.model.language_model
    linears = sum(module_bytes(m) for name, m in lm.named_modules()
                  if name.startswith("layers.") and type(m).__name__ == "Linear")  # fmt: skip
    seen: set[int] = set()
    step = module_bytes(lm.layers, seen) + module_bytes(lm.norm, seen) + module_bytes(
        model.lm_head, seen)
    step += lm.embed_tokens.embedding_dim * lm.embed_tokens.weight.element_size()  # one row
    return {"lm_linears": linears, "language_model": module_bytes(lm),
            "whole_model": module_bytes(model), "vision": module_bytes(model.model.visual),
            "decode_step": step}


def prompt_tokens_640x480() -> int:
    """Tokens of the card prompt about a 640x480 frame (fed 644x476: 391 image tokens), counted
    with the tiny offline tokenizer (a byte-level BPE less efficient than Qwen's: an upper
    bound for the text part)."""
    from pathlib import Path

    from transformers import AutoProcessor

    from spatialthinker_ros.core.geometry import fit_to_pixel_budget
    from spatialthinker_ros.core.options import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from spatialthinker_ros.core.prompt import build_prompt
    from spatialthinker_ros.testing.tiny_model import cached_tiny_model

    directory = cached_tiny_model(Path.home() / ".cache" / "spatialthinker_ros" / "test-models")
    processor = AutoProcessor.from_pretrained(directory)
    width, height = fit_to_pixel_budget(640, 480, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    text = build_prompt("Where is the cube relative to the ball?", width, height,
                        ("left", "right"))  # fmt: skip
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_tokens = (width // 28) * (height // 28)
    return len(processor.tokenizer(chat)["input_ids"]) - 1 + image_tokens  # pad counted once


def main() -> int:
    from spatialthinker_ros.core.quantization import quantize_language_model

    t0 = time.perf_counter()
    results: dict[str, dict[str, int]] = {}
    model = build()
    print(f"[{time.perf_counter() - t0:5.0f} s] built bf16; RSS now/peak {rss_gb()[0]:.2f} / "
          f"{rss_gb()[1]:.2f} GB", flush=True)
    results["none"] = measure(model)
    for mode in ("int8", "int4"):
        if mode == "int4":
            del model
            gc.collect()
            model = build()
        note = quantize_language_model(model, mode, "cpu")
        results[mode] = measure(model)
        print(f"[{time.perf_counter() - t0:5.0f} s] {note}; RSS now/peak {rss_gb()[0]:.2f} / "
              f"{rss_gb()[1]:.2f} GB", flush=True)
    text = QWEN25_VL_3B_TEXT
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    prompt = prompt_tokens_640x480()
    tokens = prompt + NEW_TOKENS
    kv = text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head_dim * tokens * 2

    gb = lambda n: f"{n / 1e9:.3f}"  # noqa: E731
    print(f"\nQwen2.5-VL-3B architecture, random bf16 weights, CPU, torch quantization via "
          f"core/quantization.py; peak RSS {rss_gb()[1]:.2f} GB\n")
    print("| mode | decoder linears GB | language model GB | vision GB | whole model GB | "
          "decode step reads GB |")
    print("|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {gb(r['lm_linears'])} | {gb(r['language_model'])} | {gb(r['vision'])}"
              f" | {gb(r['whole_model'])} | {gb(r['decode_step'])} |")
    print(f"\nKV cache: {text['num_hidden_layers']} layers x 2 x {text['num_key_value_heads']} KV "
          f"heads x {head_dim} x {tokens} tokens ({prompt} prompt of a 640x480 frame + "
          f"{NEW_TOKENS} new) x 2 bytes = {kv / 1e9:.3f} GB\n")
    print("| module | memory GB | bandwidth GB/s | " + " | ".join(
        f"{m}: needs GB / fits / ceiling tok/s" for m in results) + " |")
    print("|---|---|---|" + "---|" * len(results))
    reserve = RESERVE_GB
    for name, memory, bandwidth in JETSONS:
        cells = []
        for r in results.values():
            need = (r["whole_model"] + kv) / 1e9 + RUNTIME_GB
            fits = "yes" if need + reserve <= memory else "no"
            cells.append(f"{need:.1f} / {fits} / {bandwidth * 1e9 / r['decode_step']:.0f}")
        print(f"| {name} | {memory} | {bandwidth} | " + " | ".join(cells) + " |")
    print(f"\nneeds = whole model + KV cache + {RUNTIME_GB} GB runtime; fits = needs + the "
          f"{reserve} GB kept free for the OS and the robot's stack <= the module's memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
