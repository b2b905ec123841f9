"""The decode paths on the CPU, hardware-independent figures first: model forward passes per
generated token with prompt lookup, generated tokens saved by stop_after="scene_graph", and the
decode loop's generate time against eager `generate` (one thread, chunk sizes swept), its
warm-up time, recompiles and host syncs per answer, next to wall times (which on a CPU say
little about a GPU: bench/gpu.py measures those).

Models: the fitted tiny model (it answers with `testing.tiny_model.EXAMPLE_OUTPUT`, a
SpatialThinker-style output with repeated ids, keys and boxes) and a random model whose weights
are drawn large enough (std 0.2) that its garbage depends on the input (drafts rarely match).
Every path's ids are compared with the eager path's.

    PYTHONPATH=. .venv/bin/python bench/decode_paths.py            # a few minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/decode_paths.py --no-compile
    PYTHONPATH=. .venv/bin/python bench/decode_paths.py --loop-only  # the decode loop only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from _common import Stats, machine_line, noise_rgb, print_table

from spatialthinker_ros.testing.forward_counter import HostSyncCounter

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


def generate_time(engine, image, n: int) -> tuple[float, tuple[int, ...]]:
    """Seconds of the backend's generate (prefill + decode) for one answer, and its ids."""
    result = engine.answer(image, *QUESTION)
    assert result.generated_tokens <= n
    return result.timings.generate_s, result.generated_token_ids


def host_syncs(engine, image, watched) -> int:
    engine.answer(image, *QUESTION)  # the prompt token cache knows the frame size
    with HostSyncCounter(watched) as counter:
        engine.answer(image, *QUESTION)
    return counter.count


def loop_section(eager, model_dir: Path, repeats: int) -> None:
    """The decode loop (compile on) against eager `generate` on the fitted model, one torch
    thread, interleaved repeats; chunk sizes swept on the same compiled step."""
    import torch
    from torch._dynamo.utils import counters

    from spatialthinker_ros.core import decode_loop
    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\n## Decode loop (compile on) vs eager generate, fitted model, CPU, 1 thread")
    t0 = time.perf_counter()
    engine = SpatialThinkerEngine(EngineConfig(model=str(model_dir), device="cpu",
                                               max_pixels=FITTED_MAX_PIXELS, compile="on"))
    engine.load()
    load_s = time.perf_counter() - t0
    loop = engine.backend.loop
    graphs = counters["stats"]["unique_graphs"]
    recompiles = sum(counters["recompiles"].values())
    same = True
    for seed, size in ((1, (640, 480)), (2, (336, 252)), (3, (640, 480))):
        frame = noise_rgb(*size, seed=seed)
        same &= (engine.answer(frame, *QUESTION).generated_token_ids
                 == eager.answer(frame, *QUESTION).generated_token_ids)  # fmt: skip
    print(f"load {load_s:.1f} s (compile + warm-up {engine.backend.warmup_s:.1f} s); graphs "
          f"{graphs}, new graphs / recompiles after 3 frames of 2 sizes: "
          f"{counters['stats']['unique_graphs'] - graphs} / "
          f"{sum(counters['recompiles'].values()) - recompiles}; same ids: {same}")
    image = noise_rgb(640, 480, seed=1)
    n = engine.config.max_new_tokens
    # The same loop with its step left eager (what compiling the step buys).
    uncompiled = decode_loop.DecodeLoop(eager.backend.model, loop.max_cache_len, "cpu",
                                        compiled=False)  # fmt: skip
    paths = [("eager generate", eager, None, None)]
    paths += [("decode loop", engine, k, None) for k in (1, 4, 8, 16)]
    paths += [("decode loop, step not compiled", eager, decode_loop.CHUNK_TOKENS, uncompiled)]
    samples: dict[int, list[float]] = {i: [] for i in range(len(paths))}
    ids: dict[int, tuple] = {}
    for _ in range(repeats + 1):  # the first round warms up (dropped)
        for i, (_, eng, chunk, swap) in enumerate(paths):
            if chunk is not None:
                (swap or loop).set_chunk(chunk)
            eng.backend.loop = swap or eng.backend.loop
            seconds, ids[i] = generate_time(eng, image, n)
            samples[i].append(seconds)
            if swap is not None:
                eng.backend.loop = None
    loop.set_chunk(decode_loop.CHUNK_TOKENS)
    step = loop.step
    loop.step = HostSyncCounter.device_work(step)  # the compiled step's ops are device work
    syncs = {"eager generate": host_syncs(eager, image, []),
             "decode loop": host_syncs(engine, image, [loop.ids])}  # fmt: skip
    loop.step = step
    eager_min = min(samples[0][1:])
    rows = []
    for i, (name, _, chunk, _) in enumerate(paths):
        stats = Stats(tuple(samples[i][1:]))
        rows.append([name, str(chunk or "-"), str(len(ids[i])), f"{stats.min:.3f}",
                     f"{stats.median:.3f}", f"{stats.min / eager_min:.2f}x",
                     str(syncs.get(name, "")) if chunk in (None, decode_loop.CHUNK_TOKENS)
                     else "", "yes" if ids[i] == ids[0] else "NO"])  # fmt: skip
    print_table(["path", "chunk", "tokens", "min s", "median s", "vs eager (min)",
                 "host syncs / answer", "same ids"], rows)  # fmt: skip
    prefill = Stats(tuple(_prefill_time(loop, engine, image) for _ in range(repeats)))
    print(f"(generate = prefill + decode; the prefill alone, the same forward in both paths: "
          f"min {prefill.min:.3f} s)")
    torch.set_num_threads(threads)


def _prefill_time(loop, engine, image) -> float:
    import torch

    prepared = engine.prepare_image(image)
    inputs = engine.backend.encode(prepared.image, engine.prompt_for(prepared, *QUESTION))
    with torch.inference_mode():
        t0 = time.perf_counter()
        loop.prefill(inputs)
        return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random-tokens", type=int, default=200)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loop-only", action="store_true",
                        help="only the decode loop against eager generate")
    args = parser.parse_args()

    import torch

    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.testing.tiny_model import (
        EXAMPLE_OUTPUT,
        FITTED_MAX_PIXELS,
        cached_tiny_model,
    )

    t0 = time.perf_counter()
    cache = Path(os.environ.get("SPATIALTHINKER_TEST_MODELS")
                 or Path.home() / ".cache" / "spatialthinker_ros" / "test-models")  # the tests'
    fitted_dir = cached_tiny_model(cache, fit_text=EXAMPLE_OUTPUT)
    random_dir = cached_tiny_model(cache, init_std=0.2)
    print(f"(models built or found in {time.perf_counter() - t0:.0f} s)")
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
    if not args.loop_only:
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
        loop_section(fitted, fitted_dir, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
