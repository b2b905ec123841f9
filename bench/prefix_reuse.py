"""Several questions on one frame: `engine.answer_many` (one image prefill, a KV-cache copy per
question) against the model card's usage snippet called once per question, same weights.

The model is a mid-sized random Qwen2.5-VL built offline (`build_tiny_model` with larger widths),
run on the CPU; every answer is forced to the same length (min_new_tokens = max_new_tokens) so
both sides do the same decode work. Both sides see the same 644x476 image and the same prompt,
so their greedy tokens must match: the table says whether they did. The batched columns are
the opt-in `core.prefix_cache.generate_many(batched=True)` (all questions decode as one batch);
`engine.answer_many` uses the sequential continuation (one question after the other).

    PYTHONPATH=. .venv/bin/python bench/prefix_reuse.py            # about 3-4 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/prefix_reuse.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import Stats, card_snippet, machine_line, noise_rgb, print_table

QUESTIONS = [
    ("Where is the cube relative to the ball?", ("left", "right", "above", "below")),
    ("Is the cup on the table?", ("yes", "no")),
    ("Which object is closer to the camera?", ("the cube", "the ball")),
    ("How many chairs are there?", ("one", "two", "three")),
    ("What is behind the robot?", ()),
    ("Can the arm reach the mug?", ("yes", "no")),
    ("Which is bigger, the box or the bin?", ("the box", "the bin")),
    ("Where is the door?", ("left", "right", "ahead")),
]


def build_model(out: Path, args) -> Path:
    """A random model; weights redrawn at std `--init-std`: at the default init (0.02, tied
    embeddings) it repeats the prompt's last token, which would make the token check vacuous."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spatialthinker_ros.testing.tiny_model import build_tiny_model

    build_tiny_model(
        out,
        text_width=args.text_width,
        text_layers=args.text_layers,
        vision_width=args.vision_width,
        vision_layers=args.vision_layers,
    )
    if args.init_std > 0:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, args.init_std, generator=generator)
        model.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", default="1,2,4,8", help="question counts to compare")
    parser.add_argument("--out-len", type=int, default=48, help="generated tokens per answer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-width", type=int, default=512)
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vision-width", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--init-std", type=float, default=0.1, help="0: builder's default init")
    parser.add_argument("--model-dir", help="reuse a model built earlier (else a temp dir)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 repeat, 1-4 questions")
    args = parser.parse_args()
    if args.quick:
        args.text_width, args.text_layers, args.vision_width, args.vision_layers = 128, 2, 64, 2
        args.repeats, args.questions, args.out_len = 1, "1,2,4", 16
    counts = [int(c) for c in args.questions.split(",")]
    if max(counts) > len(QUESTIONS):
        parser.error(f"at most {len(QUESTIONS)} questions")

    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from spatialthinker_ros.core import prefix_cache
    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.core.prompt import question_text

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model_dir) if args.model_dir else build_model(Path(tmp.name), args)

    engine = SpatialThinkerEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_new_tokens=args.out_len)
    )
    engine.load()
    # The engine's generate takes the rest of its settings from the model's generation config.
    engine.backend.model.generation_config.min_new_tokens = args.out_len
    # The card's snippet loads its own copy, exactly as the card does.
    card_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(model_dir), torch_dtype="auto", device_map="auto"
    )
    card_processor = AutoProcessor.from_pretrained(str(model_dir))

    frame = noise_rgb(640, 480, seed=1)
    prepared = engine.prepare_image(frame)
    image = prepared.image  # 644x476: both sides see the same pixels and the same prompt
    n_params = sum(p.numel() for p in card_model.parameters())

    def run_card(k: int) -> list[list[int]]:
        return [
            card_snippet(card_model, card_processor, image, question_text(q, c), args.out_len)
            for q, c in QUESTIONS[:k]
        ]

    def run_engine(k: int):
        return engine.answer_many(image, [(q, c) for q, c in QUESTIONS[:k]])

    def run_batched(k: int):
        # The opt-in batched continuation (core.prefix_cache, not behind answer_many).
        prompts = [engine.prompt_for(prepared, q, c) for q, c in QUESTIONS[:k]]
        outputs = prefix_cache.generate_many(
            engine.backend.model, engine.backend.processor, image, prompts, batched=True,
            max_new_tokens=args.out_len, min_new_tokens=args.out_len,
        )  # fmt: skip
        return [list(o.token_ids) for o in outputs]

    # Warm-up both paths once (first-call allocations, lazy imports).
    run_card(1)
    run_engine(2)
    run_batched(2)
    card_times = {k: [] for k in counts}
    engine_times = {k: [] for k in counts}
    batched_times = {k: [] for k in counts}
    same = {k: True for k in counts}
    same_batched = {k: True for k in counts}
    for _ in range(args.repeats):
        for k in counts:  # interleaved, so load from other processes hits both sides alike
            t0 = time.perf_counter()
            card_ids = run_card(k)
            card_times[k].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results = run_engine(k)
            engine_times[k].append(time.perf_counter() - t0)
            same[k] &= [list(r.generated_token_ids) for r in results] == card_ids
            assert all(r.generated_tokens == args.out_len for r in results)
            if k > 1:
                t0 = time.perf_counter()
                batched_ids = run_batched(k)
                batched_times[k].append(time.perf_counter() - t0)
                same_batched[k] &= batched_ids == card_ids

    # Where the time goes: one prompt's prefill vs one answer's decode (card path, 1 question).
    prefill = Stats(tuple(_card_prefill_s(card_model, card_processor, image) for _ in range(3)))
    one = Stats(tuple(card_times[counts[0]])) if counts[0] == 1 else None

    print(f"# prefix_reuse  {time.strftime('%Y-%m-%d %H:%M')}  {machine_line()}")
    print(
        f"model: random Qwen2.5-VL, text {args.text_width} x {args.text_layers} layers, vision "
        f"{args.vision_width} x {args.vision_layers}, {n_params / 1e6:.1f} M params (init std "
        f"{args.init_std or 'default'}), fp32 CPU, {torch.get_num_threads()} threads; "
        f"image 644x476 ({(644 // 28) * (476 // 28)} image tokens); {args.out_len} tokens per "
        f"answer; {args.repeats} repeats"
    )
    rows = []
    for k in counts:
        c, e = Stats(tuple(card_times[k])), Stats(tuple(engine_times[k]))
        b = Stats(tuple(batched_times[k])) if batched_times[k] else None
        rows.append(
            [
                k,
                f"{c.min:.3f} / {c.median:.3f}",
                f"{e.min:.3f} / {e.median:.3f}",
                f"{e.min / c.min:.2f} / {e.median / c.median:.2f}",
                "yes" if same[k] else "NO",
                f"{b.min:.3f} / {b.median:.3f}" if b else "-",
                f"{b.min / c.min:.2f} / {b.median / c.median:.2f}" if b else "-",
                ("yes" if same_batched[k] else "NO") if b else "-",
            ]
        )
    print_table(
        [
            "questions",
            "card s (min / med)",
            "answer_many s",
            "ratio",
            "same tokens",
            "batched s",
            "batched ratio",
            "same tokens",
        ],
        rows,
    )
    if one is not None:
        p, a = prefill.min, one.min
        print(
            f"one prompt's prefill (vision + {_prompt_len(card_processor, image)} tokens, "
            f"generate with 1 new token): {p:.3f} s of a {a:.3f} s answer ({p / a:.0%}): the "
            "part of each extra question that the shared prefix can save"
        )
    tmp.cleanup()
    return 0


def _prompt_len(processor, image) -> int:
    return int(_card_inputs(processor, image)["input_ids"].shape[1])


def _card_inputs(processor, image):
    from spatialthinker_ros.core.prompt import build_prompt

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": build_prompt(QUESTIONS[0][0], *image.size)},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[image], return_tensors="pt")


def _card_prefill_s(model, processor, image) -> float:
    """One full-prompt prefill (vision tower + all prompt tokens), as generate's first step."""
    import torch

    inputs = _card_inputs(processor, image)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1, min_new_tokens=1)
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
