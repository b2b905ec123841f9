"""gpu.py's quantization rows (issue 20): bf16 / int8 / int4 engines on the same model directory,
each on the compiled path, one after the other (each unloaded before the next), the same frame.

Per mode: decode tokens/s at batch 1 ((N - 1) / (t(N) - t(1))), its share of that mode's own
ceiling (the bytes one decode step reads in that mode, `core.quantization.module_bytes`, at
`--bandwidth-tbs`), first token, peak CUDA memory over a request with the static cache sized
for max_new_tokens 1024 and a 640x480 frame (weights included), and whether the ids equal
bf16's (reported: quantized weights change tokens). Targets: int4 >= 2.5x bf16's tokens/s;
int4 peak <= 4 GB.

Kept apart from gpu.py (whose other rows another change rewrites) so the two merge cleanly;
`python bench/gpu.py --quant` (after the other rows) or `--quant-only` runs it.
"""

from __future__ import annotations

import dataclasses
import time

MODES = ("none", "int8", "int4")
PEAK_NEW_TOKENS = 1024  # the memory target: a 640x480 frame and 1024 new tokens


def step_bytes(model) -> int:
    """Bytes one decode step reads: decoder layers + final norm + lm_head + one embedding row,
    as stored (quantized tensors with their scales)."""
    from spatialthinker_ros.core.quantization import module_bytes

    lm = model.model.language_model
    seen: set[int] = set()
    total = sum(module_bytes(m, seen) for m in (lm.layers, lm.norm, model.lm_head))
    return total + lm.embed_tokens.embedding_dim * lm.embed_tokens.weight.element_size()


def quantization_rows(report, args, clock, base, image, question, choices, n_out: int,
                      no_end_token) -> None:
    """Load each mode's compiled engine from `base` (an EngineConfig), time it, unload it."""
    import torch

    from spatialthinker_ros.core.engine import SpatialThinkerEngine

    rows, rates, reference = [], {}, None
    compile_mode = "on" if clock.cuda else "off"
    for mode in MODES:
        started = time.perf_counter()
        engine = None
        try:
            engine = SpatialThinkerEngine(dataclasses.replace(
                base, quantization=mode, compile=compile_mode,
                max_new_tokens=max(PEAK_NEW_TOKENS, n_out)))  # fmt: skip
            load_s, _ = clock.time(engine.load)
            model = engine.backend.model
            ceiling = args.bandwidth_tbs * 1e12 / step_bytes(model)

            def call(n: int, engine=engine):
                e = SpatialThinkerEngine(dataclasses.replace(engine.config, max_new_tokens=n),
                                         engine.backend)  # fmt: skip
                return lambda: e.answer(image, question, choices).generated_token_ids

            peaks: dict = {}
            times = {1: [], n_out: []}
            with no_end_token(model):
                for n in times:  # warm-up
                    ids = clock.time(call(n))[1]
                with clock.peak(peaks, mode):
                    for _ in range(args.repeats):
                        for n in times:
                            times[n].append(clock.time(call(n))[0])
            first, full = min(times[1]), min(times[n_out])
            rates[mode] = (n_out - 1) / max(full - first, 1e-9)
            reference = reference if reference is not None else ids
            same = "yes" if ids == reference else next(
                (f"no: from token {i}" for i, (a, b) in enumerate(zip(ids, reference,
                                                                      strict=False)) if a != b),
                "no: length")  # fmt: skip
            rows.append([mode, engine.describe()["quantization"][:60], f"{load_s:.0f}",
                         f"{step_bytes(model) / 1e9:.2f}", f"{ceiling:.0f}",
                         f"{rates[mode]:.1f}", f"{100 * rates[mode] / ceiling:.1f}%",
                         f"{first * 1e3:.0f}", peaks.get(mode, "-"), same])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a failed mode is a row with its error
            rows.append([mode, "FAILED: " + report.failure(f"quantization {mode}", exc)]
                        + [""] * 8)
        finally:
            if engine is not None:
                engine.unload()
            if clock.cuda:
                torch.cuda.empty_cache()
        report.section(f"quantization {mode}", started)
    path = "compiled path" if clock.cuda else "eager path (CPU smoke)"
    report.line(f"## Quantization, {path} (N = {n_out}; static cache for "
                f"{max(PEAK_NEW_TOKENS, n_out)} new tokens; peak over requests, weights included)")
    report.table("quantization", ["mode", "what", "load s", "GB read per step", "ceiling tok/s",
                                  "decode tok/s", "of own ceiling", "first token ms",
                                  "peak GiB", "ids = bf16's"], rows)  # fmt: skip
    bf16, int4 = rates.get("none"), rates.get("int4")
    if bf16 and int4:
        peak = next((r[8] for r in rows if r[0] == "int4"), "-")
        report.line(f"targets: int4 {int4 / bf16:.2f}x bf16's decode tokens/s (>= 2.5x: "
                    f"{'met' if int4 >= 2.5 * bf16 else 'MISSED'}); int4 peak {peak} GiB "
                    f"(<= 4 GB: {'met' if isinstance(peak, float) and peak * 2**30 <= 4e9 else 'MISSED or not measured'})")  # noqa: E501
        report.line()
