"""`spatialthinker-ros`: ask a question about an image, replay bags, evaluate on benchmarks, make
demo data."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .core.engine import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_MODEL, EngineConfig, Result
from .core.prompt import PromptStyle


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Model options shared by `ask`, `replay` and `eval`."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local model directory")
    g.add_argument("--backend", choices=["transformers", "openai"], default="transformers")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument(
        "--attn",
        dest="attn_implementation",
        default="auto",
        choices=["auto", "sdpa", "eager", "flash_attention_2"],
    )
    g.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="%(default)s")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="%(default)s")
    g.add_argument(
        "--prompt-style",
        default=PromptStyle.CARD.value,
        choices=[s.value for s in PromptStyle],
        help="card: the model card's prompt; paper_eval: the paper's evaluation prompt "
        "(default: %(default)s)",
    )
    r = parser.add_argument_group("remote backend (--backend openai)")
    r.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    r.add_argument("--api-model", default="", help="served model name (default: --model)")
    r.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key")
    r.add_argument("--timeout", dest="timeout_s", type=float, default=60.0, help="seconds")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig.from_options(vars(args))


def format_result(result: Result) -> str:
    """Human-readable answer, scene graph and timings."""
    r = result.reasoning
    lines = [f"question: {result.question}"]
    if result.choices:
        lines.append("choices:  " + ", ".join(result.choices))
    answer = f"({r.answer.option}) {r.answer.text}" if r.answer.option else r.answer.text
    lines.append(f"answer:   {answer or '-'}")
    if result.choices:
        lines.append(f"matched:  {r.answer.matched_choice or '(no choice matched)'}")
    status = r.status.value + (f" ({r.message})" if r.message else "")
    lines.append(f"status:   {status}")
    g = r.scene_graph
    lines.append(f"scene graph ({g.image_width} x {g.image_height} px):")
    for o in g.objects:
        box = (
            "no box"
            if o.box is None
            else "[" + ", ".join(f"{v:.0f}" for v in o.box.as_list()) + "]"
        )
        lines.append(f"  {o.id:<16} {o.label:<12} {box}")
    for rel in g.relations:
        lines.append(f"  {rel.subject} --{rel.predicate}--> {rel.object}")
    t = result.timings
    lines.append(
        f"model input {result.model_size[0]} x {result.model_size[1]}, "
        f"{result.prompt_tokens} prompt + {result.generated_tokens} generated tokens"
    )
    lines.append(
        f"time: preprocess {t.preprocess_s * 1e3:.1f} ms, generate {t.generate_s * 1e3:.1f} ms, "
        f"parse {t.parse_s * 1e3:.2f} ms, total {t.total_s * 1e3:.1f} ms"
    )
    return "\n".join(lines)


def ask_main(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from .core.engine import SpatialThinkerEngine
    from .core.serialize import result_to_dict

    try:
        with Image.open(args.image) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        return _fail(f"cannot read image {args.image}: {exc}")
    engine = SpatialThinkerEngine(engine_config_from_args(args))
    engine.load()
    on_text = (lambda s: print(s, end="", file=sys.stderr, flush=True)) if args.stream else None
    result = engine.answer(image, args.question, args.choices, on_text=on_text)
    if args.stream:
        print(file=sys.stderr)
    if args.annotate:
        import numpy as np

        from .core.visualize import draw_scene_graph

        annotated = draw_scene_graph(
            np.asarray(image), result.reasoning.scene_graph, result.reasoning.answer
        )
        Image.fromarray(annotated).save(args.annotate)
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2))
    else:
        print(format_result(result))
        if args.annotate:
            print(f"annotated image: {args.annotate}")
    return 0


def make_test_model_main(args: argparse.Namespace) -> int:
    from .testing.tiny_model import EXAMPLE_OUTPUT, build_tiny_model

    out = build_tiny_model(args.out, fit_text=EXAMPLE_OUTPUT if args.fitted else None)
    print(f"wrote a tiny {'fitted ' if args.fitted else ''}Qwen2.5-VL test model to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatialthinker-ros",
        description="SpatialThinker-3B spatial question answering for robots (ROS-free tools).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a spatial question about an image file")
    ask.add_argument("image", type=Path, help="image file (JPEG, PNG, ...)")
    ask.add_argument("question")
    ask.add_argument(
        "--choices", nargs="+", metavar="CHOICE", help="answer options: (A) ... (B) ..."
    )
    ask.add_argument("--json", action="store_true", help="print the full result as JSON")
    ask.add_argument("--annotate", type=Path, metavar="OUT.png", help="write the image with boxes")
    ask.add_argument(
        "--stream", action="store_true", help="print the model's text to stderr as it comes"
    )
    add_engine_arguments(ask)
    ask.set_defaults(func=ask_main)

    from .replay import add_replay_arguments, replay_main
    from .sample_bag import add_make_sample_bag_arguments, make_sample_bag_main

    replay = sub.add_parser("replay", help="run the pipeline over a rosbag2 (MCAP/sqlite3)")
    add_replay_arguments(replay)
    add_engine_arguments(replay)
    replay.set_defaults(func=replay_main)
    from .evaluation.cli import DESCRIPTION, add_eval_arguments, eval_main

    evaluate = sub.add_parser(
        "eval",
        help="accuracy on CV-Bench, BLINK or a JSONL benchmark, next to the paper's numbers",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(evaluate)
    add_eval_arguments(evaluate)  # after: it sets the paper's defaults for engine options
    evaluate.set_defaults(func=eval_main)
    sample = sub.add_parser("make-sample-bag", help="write a small synthetic RGB-D camera bag")
    add_make_sample_bag_arguments(sample)
    sample.set_defaults(func=make_sample_bag_main)

    tiny = sub.add_parser(
        "make-test-model",
        help="write a tiny random Qwen2.5-VL model directory (offline demos and tests)",
    )
    tiny.add_argument("out", type=Path)
    tiny.add_argument(
        "--fitted",
        action="store_true",
        help="fit it (~10 s) to always answer with a fixed SpatialThinker-style output",
    )
    tiny.set_defaults(func=make_test_model_main)
    return parser


def _fail(message: str) -> int:
    print(f"spatialthinker-ros: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from .core.engine import EngineError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
