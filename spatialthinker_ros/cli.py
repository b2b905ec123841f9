"""`spatialthinker-ros`: ask a question about an image, replay bags, evaluate on benchmarks, make
demo data."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .arguments import (
    add_engine_arguments,
    add_stop_after_argument,
    engine_config_from_args,
    fail,
)
from .ask_layout import answer_lines, question_lines, scene_lines
from .core.engine import SpatialThinkerEngine
from .core.files import (
    MAX_IMAGE_FILE_BYTES,
    input_file_problem,
    output_dir_problem,
    output_file_problem,
    read_capped,
    write_atomic,
)
from .core.text import one_line
from .core.types import EngineError, Result
from .evaluation.cli import DESCRIPTION, add_eval_arguments, eval_main
from .replay import add_replay_arguments, replay_main
from .ros.ask_node import add_node_arguments, ask_node_main, local_problem, wants_node
from .sample_bag import add_make_sample_bag_arguments, make_sample_bag_main


def format_result(result: Result) -> str:
    """Human-readable answer, scene graph and timings (the layout of `ask_layout`)."""
    r = result.reasoning
    lines = [
        *question_lines(result.question, result.choices),
        *scene_lines(r.observation, r.scene_graph),
        *answer_lines(r.answer.option, r.answer.text, result.choices, r.answer.matched_choice,
                      r.status, r.message, result.stop_after),
    ]
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def ask_main(args: argparse.Namespace) -> int:
    from PIL import Image

    from .core.images import FILE_FORMATS, ImageConversionError, decode_compressed
    from .core.serialize import result_to_dict

    if wants_node(args):  # the live node instead of a local model (rclpy only there)
        return ask_node_main(args)
    problem = local_problem(args)
    if problem is not None:
        return fail(problem)
    config = engine_config_from_args(args)
    problem = input_file_problem(args.image)
    if problem is not None:
        return fail(f"cannot read image: {problem}")
    if args.annotate is not None:
        problem = output_file_problem(args.annotate, make_parents=False)
        if problem is None and args.annotate.suffix.lower() not in Image.registered_extensions():
            problem = f"{args.annotate}: unknown image file extension (use .png or .jpg)"
        if problem is None and _same_file(args.annotate, args.image):
            problem = f"{args.annotate} is the input image (it would be overwritten)"
        if problem is not None:
            return fail(f"--annotate: {problem}")
    engine = SpatialThinkerEngine(config)
    engine.check_question(args.question, args.choices or ())  # before the model loads
    engine.check_stop_after(args.stop_after)
    try:
        data = read_capped(args.image, MAX_IMAGE_FILE_BYTES)
        rgb = decode_compressed(data, config.max_image_pixels, FILE_FORMATS)
    except (OSError, ImageConversionError) as exc:
        return fail(f"cannot read image {args.image}: {one_line(exc)}")
    engine.load()
    on_text = (lambda s: print(s, end="", file=sys.stderr, flush=True)) if args.stream else None
    result = engine.answer(rgb, args.question, args.choices, on_text=on_text,
                           stop_after=args.stop_after)
    if args.stream:
        print(file=sys.stderr)
    if args.annotate:
        from .core.visualize import draw_scene_graph

        annotated = draw_scene_graph(rgb, result.reasoning.scene_graph, result.reasoning.answer)
        try:  # encoded in memory, then a temporary file renamed: never a part-written image
            buffer = io.BytesIO()
            image_format = Image.registered_extensions()[args.annotate.suffix.lower()]
            Image.fromarray(annotated).save(buffer, format=image_format)
            write_atomic(args.annotate, buffer.getbuffer())
        except (OSError, ValueError, KeyError) as exc:
            return fail(f"--annotate: cannot write {args.annotate}: {one_line(exc)}")
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2))
    else:
        print(format_result(result))
        if args.annotate:
            print(f"annotated image: {args.annotate}")
    return 0


def make_test_model_main(args: argparse.Namespace) -> int:
    from .testing.tiny_model import EXAMPLE_OUTPUT, build_tiny_model

    problem = output_dir_problem(args.out)
    if problem is not None:
        return fail(problem)
    existed = args.out.exists()
    try:
        out = build_tiny_model(args.out, fit_text=EXAMPLE_OUTPUT if args.fitted else None)
    except Exception as exc:  # noqa: BLE001 - OSError, SafetensorError: a disk full and kin
        if not existed:  # ours and not a loadable model: nothing left half-written
            shutil.rmtree(args.out, ignore_errors=True)
        fail(f"cannot write the test model to {args.out}: {one_line(exc)}")
        return 1
    print(f"wrote a tiny {'fitted ' if args.fitted else ''}Qwen2.5-VL test model to {out}")
    return 0


def tool_schema_main(args: argparse.Namespace) -> int:
    from .tool_schema import main as schema_json

    print(schema_json(args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatialthinker-ros",
        description="SpatialThinker-3B spatial question answering for robots (ROS-free tools).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser(
        "ask", help="answer a spatial question about an image file (or ask the live node)",
        usage="%(prog)s IMAGE QUESTION [options]\n       %(prog)s QUESTION --node [NAME] "
        "[options]")
    ask.add_argument("image", type=Path, nargs="?",
                     help="image file (JPEG, PNG, ...); none with --node")
    ask.add_argument("question", nargs="?")
    ask.add_argument(
        "--choices", nargs="+", metavar="CHOICE", help="answer options: (A) ... (B) ..."
    )
    ask.add_argument("--json", action="store_true", help="print the full result as JSON")
    ask.add_argument("--annotate", type=Path, metavar="OUT.png", help="write the image with boxes")
    ask.add_argument(
        "--stream", action="store_true", help="print the model's text to stderr as it comes"
    )
    add_stop_after_argument(ask)
    add_node_arguments(ask)
    add_engine_arguments(ask)
    ask.set_defaults(func=ask_main)

    replay = sub.add_parser("replay", help="run the pipeline over a rosbag2 (MCAP/sqlite3)")
    add_replay_arguments(replay)
    add_engine_arguments(replay)
    replay.set_defaults(func=replay_main)
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

    schema = sub.add_parser("tool-schema", help="print the LLM tool schema of the ask call (JSON)")
    schema.add_argument("--format", choices=("openai", "mcp"), default="openai",
                        help="OpenAI function calling (default) or MCP tool")
    schema.set_defaults(func=tool_schema_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as exc:
        return fail(one_line(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
