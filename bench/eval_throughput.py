"""`eval` throughput with N requests in flight (`--concurrency N`) against a remote server.

1. A local OpenAI-compatible server that takes a fixed time per request (the scripted test
   server in delay mode; each request runs on its own thread, like a server that batches
   everything in flight): items/s at N = 1, 4, 16 against the ideal N / delay. This isolates
   the client (image resize + PNG encode, HTTP, parse, results file) from the model.
2. The real `transformers serve` on the fitted tiny model (the test suite's server): items/s at
   N = 1 and 4 on the same items, and whether the results equal N = 1's.
3. With --vllm: a real vLLM server (scripts/setup_vllm.sh) at N = 1 and 8, and `transformers
   serve` at the same N, both on the fitted tiny model with head size 32 (what vLLM's CPU
   attention takes), in the same run.

Both go through `evaluation.runner.evaluate`, the code `spatialthinker-ros eval` runs.

    PYTHONPATH=. .venv/bin/python bench/eval_throughput.py              # about 3-5 minutes
    PYTHONPATH=. .venv/bin/python bench/eval_throughput.py --no-serve   # part 1 only
    PYTHONPATH=. .venv/bin/python bench/eval_throughput.py --no-serve --vllm   # part 3 too
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, machine_line, print_table, require_loopback_only

sys.path.insert(0, str(REPO_ROOT / "test"))  # the scripted server lives with the tests


def run_eval(
    engine, bench: Path, results: Path, concurrency: int, limit: int = 0
) -> tuple[dict, float, list]:
    from spatialthinker_ros.evaluation.benchmarks import open_inputs
    from spatialthinker_ros.evaluation.report import report_to_json
    from spatialthinker_ros.evaluation.results import open_results
    from spatialthinker_ros.evaluation.runner import EvalOptions, eval_settings, evaluate

    log = open_results(results, eval_settings(engine.config))
    t0 = time.perf_counter()
    try:
        options = EvalOptions(limit=limit, concurrency=concurrency, progress=False)
        report = evaluate(engine, open_inputs([str(bench)]), log, options)
    finally:
        log.close()
    wall = time.perf_counter() - t0
    import json

    records = [json.loads(line) for line in results.read_text().splitlines()]
    content = [{k: v for k, v in r.items() if k != "latency_s"} for r in records]
    return report_to_json(report), wall, content


def remote_engine(base_url: str, model: str, timeout_s: float):
    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.evaluation.paper import PAPER_EVAL

    engine = SpatialThinkerEngine(
        EngineConfig.from_options(
            {
                "model": model,
                "backend": "openai",
                "base_url": base_url,
                "timeout_s": timeout_s,
                "prompt_style": PAPER_EVAL.prompt_style,
                "max_pixels": PAPER_EVAL.max_pixels,
                "max_new_tokens": PAPER_EVAL.max_new_tokens,
            }
        )
    )
    engine.load()
    return engine


def fixed_delay(args, work: Path) -> None:
    from servers.scripted_openai import ScriptedOpenAIServer

    from spatialthinker_ros.testing import benchmark_files as bf

    width, height = args.image_size
    bench = bf.write_jsonl(work / "fixed" / "bench.jsonl", ["A"] * args.items, size=(width, height))
    server = ScriptedOpenAIServer().start()
    server.script.delay_s = args.delay
    server.script.chunks = ["<answer> (A) left </answer>"]
    server.script.usage = (500, 300)
    engine = remote_engine(server.base_url, "scripted", timeout_s=120)
    rows, baseline = [], None
    try:
        for n in args.concurrency:
            report, wall, content = run_eval(engine, bench, work / f"fixed_{n}.jsonl", n)
            baseline = content if baseline is None else baseline
            ideal = min(n, args.items) / args.delay
            rate = args.items / wall
            rows.append(
                [
                    n,
                    args.items,
                    f"{wall:.2f}",
                    f"{rate:.2f}",
                    f"{ideal:.2f}",
                    f"{rate / ideal:.0%}",
                    f"{report['latency_s']['p50']:.3f}",
                    "yes" if content == baseline else "NO",
                ]
            )
    finally:
        engine.unload()
        server.stop()
    print(
        f"\n### Fixed {args.delay:g} s per request, {width}x{height} images "
        f"(fed at {report['settings']['max_pixels']} max pixels)\n"
    )
    headers = ["N", "items", "wall s", "items/s", "ideal", "of ideal", "p50 latency s", "= N=1"]
    print_table(headers, rows)


def served_throughput(args, work: Path, server: str = "transformers serve",
                      concurrency: list[int] | None = None, **model_kwargs) -> None:
    from spatialthinker_ros.testing import benchmark_files as bf
    from spatialthinker_ros.testing.serve import transformers_serve, vllm_serve
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, cached_tiny_model

    cache = Path(os.environ.get("SPATIALTHINKER_TEST_MODELS", REPO_ROOT / "build" / "test-models"))
    model = cached_tiny_model(cache, fit_text=EXAMPLE_OUTPUT, **model_kwargs)
    bench = bf.write_jsonl(work / "served" / "bench.jsonl", ["A", "B"] * (args.served_items // 2))
    rows, baseline = [], None
    serve = vllm_serve if server == "vllm" else transformers_serve
    work = work / server.replace(" ", "_")
    work.mkdir(parents=True, exist_ok=True)
    with serve(model) as base_url:
        engine = remote_engine(base_url, str(model), timeout_s=900)
        try:
            run_eval(engine, bench, work / "warmup.jsonl", 1, limit=1)  # first-request costs
            for n in concurrency or args.served_concurrency:
                report, wall, content = run_eval(engine, bench, work / f"served_{n}.jsonl", n)
                baseline = content if baseline is None else baseline
                rows.append(
                    [
                        n,
                        args.served_items,
                        f"{wall:.2f}",
                        f"{args.served_items / wall:.3f}",
                        f"{report['latency_s']['p50']:.2f}",
                        f"{report['tokens_per_answer']['mean']:.0f}",
                        f"{report['overall']['accuracy']:.2f}",
                        "yes" if content == baseline else "NO",
                    ]
                )
        finally:
            engine.unload()
    kind = ", head size 32" if model_kwargs else ""
    print(f"\n### `{server}`, fitted tiny model{kind}, {args.served_items} items\n")
    headers = ["N", "items", "wall s", "items/s", "p50 latency s", "tokens", "accuracy", "= N=1"]
    print_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--image-size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(640, 480)
    )
    parser.add_argument("--served-items", type=int, default=8)
    parser.add_argument("--served-concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-serve", action="store_true", help="skip transformers serve")
    parser.add_argument("--vllm", action="store_true", help="vLLM and transformers serve, N=1, 8")
    args = parser.parse_args()
    require_loopback_only()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        fixed_delay(args, Path(tmp))
        if not args.no_serve:
            served_throughput(args, Path(tmp))
        if args.vllm:
            from spatialthinker_ros.testing.tiny_model import VLLM_TEXT_HEADS

            for server in ("vllm", "transformers serve"):
                served_throughput(args, Path(tmp), server, [1, 8], text_heads=VLLM_TEXT_HEADS)


if __name__ == "__main__":
    main()
