"""The decode paths on the CPU, hardware-independent figures first: model forward passes per
generated token with prompt lookup, generated tokens saved by stop_after="scene_graph", and the
compiled path's warm-up time and recompiles, next to wall times (which on a CPU say little about
a GPU: bench/gpu.py measures those).

Models: the fitted tiny model (it answers with `testing.tiny_model.EXAMPLE_OUTPUT`, a
SpatialThinker-style output with repeated ids, keys and boxes) and a random model whose weights
are drawn large enough (std 0.2) that its garbage depends on the input (drafts rarely match).
Every path's ids are compared with the eager path's.

    PYTHONPATH=. .venv/bin/python bench/decode_paths.py            # a few minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/decode_paths.py --no-compile
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from _common import Stats, machine_line, noise_rgb, print_table

QUESTION = ("Where is the cube relative to the ball?", ("left", "right"))
LOOKUPS = (5, 10, 20)


def run(engine, image, repeats: int, stop_after: str = ""):
    """(result, forward passes of one run, Stats of wall time)."""
    from spatialthinker_ros.testing.forward_counter import ForwardCounter

    counter = ForwardCounter(engine.backend.model)
    result = engine.answer(image, *QUESTION, stop_after=stop_after)
    counter.close()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.answer(image, *QUESTION, stop_after=stop_after)
        samples.append(time.perf_counter() - t0)
    return result, counter.count, Stats(tuple(samples))


def lookup_rows(name: str, engine, image, repeats: int) -> list[list[str]]:
    rows = []
    base_ids = None
    for k in (0, *LOOKUPS):
        engine.backend.config = dataclasses.replace(engine.backend.config, prompt_lookup=k)
        result, passes, stats = run(engine, image, repeats)
        ids = result.generated_token_ids
        base_ids = ids if base_ids is None else base_ids
        rows.append([name, str(k) if k else "off", str(len(ids)), str(passes),
                     f"{passes / len(ids):.3f}", f"{stats.min:.3f}", f"{stats.median:.3f}",
                     "yes" if ids == base_ids else "NO"])  # fmt: skip
    engine.backend.config = dataclasses.replace(engine.backend.config, prompt_lookup=0)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-tokens", type=int, default=200)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    import torch

    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.testing.tiny_model import (
        EXAMPLE_OUTPUT,
        FITTED_MAX_PIXELS,
        build_tiny_model,
    )

    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    fitted_dir = build_tiny_model(Path(tmp.name) / "fitted", fit_text=EXAMPLE_OUTPUT)
    random_dir = build_tiny_model(Path(tmp.name) / "random", init_std=0.2)
    print(f"(models built in {time.perf_counter() - t0:.0f} s)")
    image = noise_rgb(640, 480, seed=1)

    fitted = SpatialThinkerEngine(EngineConfig(model=str(fitted_dir), device="cpu",
                                               max_pixels=FITTED_MAX_PIXELS, compile="off"))
    fitted.load()
    random = SpatialThinkerEngine(EngineConfig(model=str(random_dir), device="cpu", compile="off",
                                               max_new_tokens=args.random_tokens))
    random.load()
    random.backend.model.generation_config.min_new_tokens = args.random_tokens

    print(f"# decode_paths  {time.strftime('%Y-%m-%d %H:%M')}  {machine_line()}")
    print(f"torch threads {torch.get_num_threads()}; {args.repeats} repeats; image 640x480 "
          f"(fed 644x476)\n")
    print("## Prompt lookup: forward passes per generated token")
    rows = lookup_rows("fitted", fitted, image, args.repeats)
    rows += lookup_rows(f"random (std 0.2, {args.random_tokens} tokens)", random, image,
                        args.repeats)  # fmt: skip
    print_table(["model", "draft tokens", "tokens", "forward passes", "per token", "min s",
                 "median s", "same ids"], rows)  # fmt: skip

    print("\n## stop_after scene_graph on the fitted model")
    full, full_passes, full_stats = run(fitted, image, args.repeats)
    stop, stop_passes, stop_stats = run(fitted, image, args.repeats, "scene_graph")
    chars = EXAMPLE_OUTPUT.index("</scene>") + len("</scene>")
    print_table(["answer", "tokens", "forward passes", "characters", "min s", "median s",
                 "status"], [
        ["full", str(full.generated_tokens), str(full_passes), str(len(full.raw)),
         f"{full_stats.min:.3f}", f"{full_stats.median:.3f}", full.reasoning.status.value],
        ["stop_after scene_graph", str(stop.generated_tokens), str(stop_passes),
         str(len(stop.raw)), f"{stop_stats.min:.3f}", f"{stop_stats.median:.3f}",
         stop.reasoning.status.value],
    ])  # fmt: skip
    saved = 1 - stop.generated_tokens / full.generated_tokens
    print(f"tokens saved: {full.generated_tokens - stop.generated_tokens} of "
          f"{full.generated_tokens} ({100 * saved:.0f}%); `</scene>` ends at character {chars} "
          f"of {len(EXAMPLE_OUTPUT)}; same graph: "
          f"{stop.reasoning.scene_graph == full.reasoning.scene_graph}")

    if not args.no_compile:
        from torch._dynamo.utils import counters

        print("\n## Compiled static-cache decode (CPU: inductor, no CUDA graphs)")
        rows = []
        for name, model_dir, extra in (
            ("fitted", fitted_dir, {"max_pixels": FITTED_MAX_PIXELS}),
            (f"random ({args.random_tokens} tokens)", random_dir,
             {"max_new_tokens": args.random_tokens}),
        ):
            eager = fitted if name == "fitted" else random
            graphs_before = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            engine = SpatialThinkerEngine(EngineConfig(model=str(model_dir), device="cpu",
                                                       compile="on", **extra))  # fmt: skip
            engine.load()
            load_s = time.perf_counter() - t0
            if name != "fitted":
                engine.backend.model.generation_config.min_new_tokens = args.random_tokens
            graphs_warm = counters["stats"]["unique_graphs"]
            same, times = True, []
            for seed, size in ((1, (640, 480)), (2, (336, 252)), (3, (640, 480))):
                frame = noise_rgb(*size, seed=seed)
                want = eager.answer(frame, *QUESTION).generated_token_ids
                t0 = time.perf_counter()
                got = engine.answer(frame, *QUESTION).generated_token_ids
                times.append(time.perf_counter() - t0)
                same = same and got == want
            _, _, eager_stats = run(eager, image, args.repeats)
            _, _, compiled_stats = run(engine, image, args.repeats)
            rows.append([name, f"{load_s:.1f}", f"{engine.backend.warmup_s:.1f}",
                         str(graphs_warm - graphs_before),
                         str(counters["stats"]["unique_graphs"] - graphs_warm),
                         f"{eager_stats.min:.3f}", f"{compiled_stats.min:.3f}",
                         "yes" if same else "NO"])  # fmt: skip
        print_table(["model", "load s", "compile + warm-up s", "graphs at warm-up",
                     "recompiles after (3 frames, 2 sizes)", "eager min s", "compiled min s",
                     "same ids"], rows)  # fmt: skip
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
