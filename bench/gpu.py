"""Decode speed of the real Qwen2.5-VL-3B architecture (random bf16 weights) on a CUDA device:
the model card's snippet against the engine's eager, compiled and prompt-lookup paths, in one
prepared run that checks itself and writes its tables as it goes.

No download, no network: the Qwen2.5-VL-3B-Instruct configuration is written out below and the
weights are drawn at random; the tokenizer is the tiny offline one (`testing.tiny_model`) and
the model keeps the real 151,936-row vocabulary. Random weights emit garbage and never close
`</scene>`, so every run generates exactly max_new_tokens (the end token is taken out of the
generation config while timing: no min_new_tokens logits processor, which would cost prompt
lookup a Python call per draft position) and "time to scene graph" is the time to SCENE_TOKENS
tokens (a typical output's length up to `</scene>`: a proxy). stop_after="scene_graph" ends the
real model's answers there: its saving is derived from the measured decode rates (table 3).

Paths (rows), min / median over `--repeats`:
- card: the model card's usage code (processor + model.generate), on the eager engine's model;
- engine eager: engine.answer, dynamic cache (compile off);
- engine eager + prompt lookup (K draft tokens);
- engine decode loop: our own loop (core/decode_loop.py: static cache, compiled one-token step
  with CUDA graphs, ids checked per chunk; compile on: the compile and warm-up happen in
  engine.load and are timed apart);
- engine decode loop, stop_after armed: the per-chunk scene-graph check running (it never fires
  on random text), i.e. its cost;
- compiled generate: the path the loop replaced (static cache + generate's torch.compile).
Under 60% of the ceiling, a torch.profiler table of a 64-token answer on the loop follows.
Columns: time to first token (prefill incl. vision tower and preprocessing), time to scene graph,
decode tokens/s at batch 1 ((N - 1) / (t(N) - t(1))) and its share of the bandwidth ceiling
(bf16 bytes of the weights one decode step reads / `--bandwidth-tbs`), peak CUDA memory, whether
the ids equal the eager engine's. Then: forward passes per generated token with prompt lookup,
4 questions on one frame (card x4, answer_many, batched), and the CPU time of preprocessing a
640x480 and a 1920x1080 frame with the image processor on the GPU vs on the CPU.

Targets (issue 19): decode loop >= 60% of the bf16 ceiling at batch 1 (goal 70%), >= 15x the
card snippet.

Every path runs in its own try: a failure is a row with its error, the others still run. The
JSON and Markdown results are rewritten after every section (`--out DIR`: gpu.json, gpu.md), so
a run cut short still leaves what it measured. `--budget-s` skips what would not fit.

    PYTHONPATH=. python bench/gpu.py --out /tmp/gpu            # CUDA: ~5-7 min on an H200
    PYTHONPATH=. python bench/gpu.py --quick --out /tmp/gpu    # fewer tokens and sections
    PYTHONPATH=. python bench/gpu.py --cpu-smoke --out /tmp/g  # tiny config on the CPU: code check

Imports: torch, transformers, numpy, PIL, tokenizers and this repository's `core` (which needs
none of rosbags, mcap, tqdm, openai, rclpy). `bench/run_gpu.sh OUT` runs it on a lent machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import Stats, card_snippet, noise_rgb

SCENE_TOKENS = 150  # tokens of a typical output up to `</scene>` (README example: ~120-170)
TYPICAL_ANSWER_TOKENS = 400  # a typical full answer (300-500)
LOOKUP_TOKENS = 10
# Seconds a section may still need: it is skipped when less of --budget-s is left.
PATH_BUDGET_S = 45
MANY_BUDGET_S = 120

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

QUESTION = ("Where is the cube relative to the ball?", ("left", "right", "above", "below"))
QUESTIONS = [
    QUESTION,
    ("Is the cup on the table?", ("yes", "no")),
    ("Which object is closer to the camera?", ("the cube", "the ball")),
    ("Can the arm reach the mug?", ("yes", "no")),
]


# ---------------------------------------------------------------------------------- report


class Report:
    """Everything measured so far; written to DIR/gpu.json and DIR/gpu.md after each section."""

    def __init__(self, out: Path | None, argv: list[str]):
        self.out = out
        self.t0 = time.perf_counter()
        self.data: dict = {"command": "python bench/gpu.py " + " ".join(argv), "meta": {},
                           "sections": {}, "failures": [], "elapsed_s": {}}  # fmt: skip
        self.markdown: list[str] = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, name: str, started: float) -> None:
        took = time.perf_counter() - started
        self.data["elapsed_s"][name] = round(took, 1)
        print(f"[{self.elapsed():6.0f} s] {name}: {took:.1f} s", flush=True)
        self.write()

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.markdown.append(text)

    def table(self, key: str, headers: list[str], rows: list[list[object]]) -> None:
        self.data["sections"][key] = [dict(zip(headers, map(_plain, r), strict=True))
                                      for r in rows]  # fmt: skip
        cells = [[str(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        self.line("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
                  + " |")  # fmt: skip
        self.line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in cells:
            self.line("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                      + " |")  # fmt: skip
        self.line()

    def failure(self, what: str, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{type(exc).__name__}: {first}"
        self.data["failures"].append({"what": what, "error": text,
                                      "traceback": traceback.format_exc()[-4000:]})  # fmt: skip
        print(f"FAILED {what}: {text}", file=sys.stderr, flush=True)
        traceback.print_exc()
        return text[:160]

    def write(self) -> None:
        if self.out is None:
            return
        self.data["elapsed_s"]["total"] = round(self.elapsed(), 1)
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / "gpu.md").write_text("\n".join(self.markdown) + "\n")


def _plain(value: object) -> object:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# ---------------------------------------------------------------------------------- model


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


def scratch_dir(need_bytes: int) -> str | None:
    """/dev/shm when it has room for the model (memory: fast to write and read back), else the
    default temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > need_bytes:
        return str(shm)
    return None


def decode_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every language-model matrix once (the tied
    embedding as the output head), at the parameters' own precision. The vision tower runs at
    prefill only. The KV cache read (36 KiB per token of context) is left out: < 1% here."""
    seen, total = set(), 0
    for module in (model.model.language_model, model.lm_head):
        for param in module.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel() * param.element_size()
    return total


@contextlib.contextmanager
def no_end_token(*models):
    """Generation runs to max_new_tokens: the models' end token is taken out meanwhile."""
    saved = [m.generation_config.eos_token_id for m in models]
    for m in models:
        m.generation_config.eos_token_id = None
    try:
        yield
    finally:
        for m, eos in zip(models, saved, strict=True):
            m.generation_config.eos_token_id = eos


class Clock:
    """Wall time with the device synchronised, and the peak memory over a block."""

    def __init__(self, cuda: bool):
        import torch

        self.cuda = cuda
        self.torch = torch

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, call) -> tuple[float, object]:
        self.sync()
        t0 = time.perf_counter()
        value = call()
        self.sync()
        return time.perf_counter() - t0, value

    @contextlib.contextmanager
    def peak(self, into: dict, key: str):
        """Peak CUDA memory allocated in the block (GiB)."""
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
        yield
        if self.cuda:
            into[key] = round(self.torch.cuda.max_memory_allocated() / 2**30, 2)


# ---------------------------------------------------------------------------------- main


def versions(cuda: bool) -> dict:
    import torch
    import transformers

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        meta.update(gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")  # fmt: skip
    else:
        meta["gpu"] = "none (CPU smoke run)"
    return meta


def check_imports() -> str | None:
    """Why this repository's engine cannot be imported here, or None."""
    try:
        import spatialthinker_ros.core.engine  # noqa: F401
    except ModuleNotFoundError as exc:
        return (f"missing module {exc.name!r} (a pure-Python package can come as a wheel on "
                "PYTHONPATH: bench/run_gpu.sh adds build/gpu-wheels/*.whl)")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--quick", action="store_true",
                        help="N=128, 1 repeat, no 4-question or eager-lookup sections")
    parser.add_argument("--out-len", type=int, default=256, help="N for the decode rate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bandwidth-tbs", type=float, default=4.8,
                        help="memory bandwidth for the ceiling (H200: 4.8 TB/s)")
    parser.add_argument("--budget-s", type=float, default=380.0,
                        help="skip sections that would start after this many seconds")
    parser.add_argument("--quant", action="store_true",
                        help="also the quantization rows (bf16/int8/int4, bench/gpu_quant.py)")
    parser.add_argument("--quant-only", action="store_true", help="only the quantization rows")
    parser.add_argument("--model-dir", help="reuse a model directory written by an earlier run")
    parser.add_argument("--out", type=Path, help="directory for gpu.json and gpu.md")
    args = parser.parse_args(argv)

    problem = check_imports()
    if problem is not None:
        print(f"bench/gpu.py: cannot run: {problem}", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        parser.error("no CUDA device: run with --cpu-smoke to check the code on the CPU")
    if args.quick:
        args.out_len, args.repeats = min(args.out_len, 128), 1
    if args.cpu_smoke:
        args.out_len, args.repeats = min(args.out_len, 24), 1
    report = Report(args.out, argv)
    report.data["meta"] = versions(cuda)
    meta = report.data["meta"]
    report.line(f"# bench/gpu.py  {meta['date']}")
    report.line(f"{meta['gpu']}; torch {meta['torch']} (CUDA {meta['torch_cuda']}), transformers "
                f"{meta['transformers']}, python {meta['python']}, {meta['cpu_cores']} cores")
    report.line(f"command: `{report.data['command']}`")
    report.line()
    report.write()
    try:
        run(args, report, cuda)
    except Exception as exc:  # noqa: BLE001 - whatever happens, the report is written
        report.failure("run", exc)
        report.line(f"RUN ABORTED: {type(exc).__name__}: {exc}")
    report.write()
    print(f"[{report.elapsed():6.0f} s] done" + (f"; results in {args.out}" if args.out else ""))
    return 0


def run(args, report: Report, cuda: bool) -> None:
    import torch

    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.core.prompt import question_text

    device, dtype_name = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    dtype = getattr(torch, dtype_name)
    n_out = args.out_len
    scene_tokens = min(SCENE_TOKENS, n_out)
    clock = Clock(cuda)
    budget_left = lambda: args.budget_s - report.elapsed()  # noqa: E731

    # -- model --------------------------------------------------------------------------
    started = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(dir=scratch_dir(12 * 2**30))
    if args.model_dir and (Path(args.model_dir) / "config.json").exists():
        model_dir = Path(args.model_dir)
    else:
        model_dir = build_model_dir(Path(args.model_dir or tmp.name), args.cpu_smoke, device,
                                    dtype)  # fmt: skip
    report.section("model built and written", started)

    base = EngineConfig(model=str(model_dir), device=device, dtype=dtype_name,
                        attn_implementation="sdpa", max_new_tokens=n_out, compile="off")
    if args.quant_only:
        run_quantization(args, report, clock, base, n_out)
        return
    started = time.perf_counter()
    eager = SpatialThinkerEngine(base)
    eager.load()
    model = eager.backend.model
    report.section("eager engine loaded", started)

    started = time.perf_counter()
    compiled = None
    try:
        compiled = SpatialThinkerEngine(dataclasses.replace(base, compile="on"))
        compiled.load()
    except Exception as exc:  # noqa: BLE001
        compiled = None
        report.failure("compiled engine load", exc)
    report.section("decode-loop engine loaded (compile + warm-up)", started)

    n_params = sum(p.numel() for p in model.parameters())
    per_token = decode_bytes_per_token(model)
    ceiling = args.bandwidth_tbs * 1e12 / per_token
    image = eager.prepare_image(noise_rgb(640, 480, seed=2)).image  # 644x476 for all paths
    card_processor = __import__("transformers").AutoProcessor.from_pretrained(str(model_dir))
    question, choices = QUESTION
    report.data["meta"].update(
        params_b=round(n_params / 1e9, 3), decode_gb_per_token=round(per_token / 1e9, 3),
        bandwidth_tbs=args.bandwidth_tbs, ceiling_tokens_s=round(ceiling, 1),
        compile=compiled.describe()["compile"] if compiled else "failed",
        out_len=n_out, scene_tokens=scene_tokens, repeats=args.repeats,
    )  # fmt: skip
    smoke = " (SMOKE: tiny config)" if args.cpu_smoke else ""
    report.line(f"model: Qwen2.5-VL-3B architecture{smoke}, random weights, "
                f"{n_params / 1e9:.3f} B params, {dtype_name}, {device}, sdpa; image 644x476 "
                f"(391 image tokens); N = {n_out}; scene graph = {scene_tokens} tokens (proxy); "
                f"{args.repeats} repeats")
    report.line(f"ceiling: {per_token / 1e9:.2f} GB of weights read per decode step at "
                f"{args.bandwidth_tbs} TB/s = {ceiling:.0f} tokens/s (batch 1)")
    if compiled is not None:
        report.line(f"decode-loop engine: {compiled.describe()['compile']}")
    report.line()

    # -- paths ----------------------------------------------------------------------------
    def set_lookup(engine, k: int) -> None:
        engine.backend.config = dataclasses.replace(engine.backend.config, prompt_lookup=k)

    def engine_call(engine, stop_after: str = ""):
        def make(n: int):
            e = SpatialThinkerEngine(dataclasses.replace(engine.config, max_new_tokens=n),
                                     engine.backend)  # fmt: skip
            return lambda: e.answer(image, question, choices,
                                    stop_after=stop_after).generated_token_ids  # fmt: skip
        return make

    def card_call(n: int):
        return lambda: tuple(card_snippet(model, card_processor, image,
                                          question_text(question, choices), n,
                                          force_length=False))  # fmt: skip

    paths = [("card (model card snippet)", eager, card_call, 0),
             ("engine eager", eager, engine_call(eager), 0)]
    if not args.quick:
        paths.append((f"engine eager + prompt lookup {LOOKUP_TOKENS}", eager, engine_call(eager),
                      LOOKUP_TOKENS))  # fmt: skip
    paths += decode_loop_paths(compiled, engine_call, model, eager, image, n_out)

    rows, rates, peaks, ids_of = [], {}, {}, {}
    lengths = sorted({1, scene_tokens, n_out})
    for name, engine, make, lookup in paths:
        started = time.perf_counter()
        if budget_left() < PATH_BUDGET_S:
            rows.append([name, "skipped: time budget"])
            continue
        try:
            set_lookup(engine, lookup)
            times = {n: [] for n in lengths}
            with clock.peak(peaks, name), no_end_token(engine.backend.model):
                for n in lengths:  # warm-up (and any recompile)
                    ids_of[name] = tuple(clock.time(make(n))[1])
                for _ in range(args.repeats):
                    for n in lengths:
                        times[n].append(clock.time(make(n))[0])
            first, scene, full = (Stats(tuple(times[n])) for n in (1, scene_tokens, n_out))
            rates[name] = (n_out - 1) / max(full.min - first.min, 1e-9)
            rows.append([name, f"{first.min * 1e3:.0f} / {first.median * 1e3:.0f}",
                         f"{scene.min:.3f} / {scene.median:.3f}", f"{full.min:.3f}",
                         f"{rates[name]:.1f}", f"{100 * rates[name] / ceiling:.1f}%",
                         peaks.get(name, "-")])  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            rows.append([name, "FAILED: " + report.failure(name, exc)])
        finally:
            set_lookup(engine, 0)
        report.section(f"path: {name}", started)
    card_rate = rates.get("card (model card snippet)")
    reference = ids_of.get("engine eager")
    for row in rows:
        if len(row) == 2:  # skipped or failed: empty cells
            row += [""] * 7
            continue
        rate, ids = rates[row[0]], ids_of[row[0]]
        row.append(_same(ids, reference) if reference is not None else "-")
        row.append(f"{rate / card_rate:.2f}x" if card_rate else "")
    headers = ["path", "first token ms (min / med)", f"{scene_tokens} tokens s (min / med)",
               f"{n_out} tokens s (min)", "decode tok/s", "of ceiling", "peak GiB",
               "ids = eager engine's", "vs card"]  # fmt: skip
    report.line(f"## Decode at batch 1 (ceiling {ceiling:.0f} tok/s)")
    report.table("paths", headers, rows)
    verdict(report, rates, ceiling)
    if compiled is not None and budget_left() > 20:
        profile_if_short(report, compiled, engine_call(compiled), rates, ceiling, cuda)

    # -- forward passes per token (prompt lookup) -----------------------------------------
    started = time.perf_counter()
    if budget_left() > 30:
        try:
            from spatialthinker_ros.testing.forward_counter import ForwardCounter

            forward_rows = []
            for k in (0, LOOKUP_TOKENS):
                set_lookup(eager, k)
                counter = ForwardCounter(eager.backend.model)
                with no_end_token(eager.backend.model):
                    ids = engine_call(eager)(n_out)()
                counter.close()
                forward_rows.append([f"eager, prompt lookup {k}", len(ids), counter.count,
                                     f"{counter.count / max(1, len(ids)):.3f}"])  # fmt: skip
            report.line("## Forward passes per generated token (random weights: drafts rarely "
                        "match; see bench/README.md for the fitted model)")
            report.table("forward_passes", ["path", "tokens", "forward passes", "per token"],
                         forward_rows)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            report.failure("forward passes", exc)
        finally:
            set_lookup(eager, 0)
    report.section("forward passes", started)

    # -- stop_after, derived --------------------------------------------------------------
    stop_rows = []
    for name, rate in rates.items():
        saved = (TYPICAL_ANSWER_TOKENS - SCENE_TOKENS) / rate
        stop_rows.append([name, f"{TYPICAL_ANSWER_TOKENS / rate:.2f}",
                          f"{SCENE_TOKENS / rate:.2f}", f"{saved:.2f}"])  # fmt: skip
    report.line(f"## stop_after scene_graph (derived: {TYPICAL_ANSWER_TOKENS}-token answer whose "
                f"scene graph closes at token {SCENE_TOKENS}; decode only)")
    report.table("stop_after", ["path", f"{TYPICAL_ANSWER_TOKENS} tokens s",
                                f"{SCENE_TOKENS} tokens s", "saved s"], stop_rows)  # fmt: skip
    report.write()

    # -- 4 questions on one frame --------------------------------------------------------
    started = time.perf_counter()
    if not args.quick and budget_left() > MANY_BUDGET_S:
        try:
            many(report, args, clock, eager, model, card_processor, image, scene_tokens, peaks)
        except Exception as exc:  # noqa: BLE001
            report.failure("4 questions", exc)
    else:
        report.line("## 4 questions on one frame: skipped (--quick or time budget)")
    report.section("4 questions", started)

    # -- preprocessing --------------------------------------------------------------------
    started = time.perf_counter()
    if budget_left() > 15:
        try:
            preprocessing(report, args, clock, eager, cuda)
        except Exception as exc:  # noqa: BLE001
            report.failure("preprocessing", exc)
    report.section("preprocessing", started)
    if args.quant and budget_left() > 3 * PATH_BUDGET_S:
        for engine in (eager, compiled):  # their memory must not count in the quantized peaks
            if engine is not None:
                engine.unload()
        run_quantization(args, report, clock, base, n_out)
    if not args.model_dir:
        shutil.rmtree(tmp.name, ignore_errors=True)


def run_quantization(args, report: Report, clock: Clock, base, n_out: int) -> None:
    """bench/gpu_quant.py's rows (issue 20) on the same model directory and frame."""
    from gpu_quant import quantization_rows

    quantization_rows(report, args, clock, base, noise_rgb(640, 480, seed=2), *QUESTION, n_out,
                      no_end_token)  # fmt: skip


def _same(ids: tuple, reference: tuple) -> str:
    if ids == reference:
        return f"yes ({len(set(reference))} distinct ids)"
    first = next((i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b),
                 min(len(ids), len(reference)))  # fmt: skip
    return f"no: from token {first}"


# ------------------------------------------------------- the decode loop (issue 19) rows

LOOP_ROW = "engine decode loop (compile on)"


def decode_loop_paths(compiled, engine_call, model, eager, image, n_out: int) -> list:
    """Rows of the decode loop (our own loop, compiled in load()) and, for comparison, the
    compiled `generate` it replaced: static cache + generate's own torch.compile of the
    forward (CUDA graphs), on the eager engine's model (compiled on its first call)."""
    paths = []
    if compiled is not None:
        paths += [(LOOP_ROW, compiled, engine_call(compiled), 0),
                  ("engine decode loop, stop_after armed", compiled,
                   engine_call(compiled, "scene_graph"), 0)]  # fmt: skip
    paths.append(("compiled generate (static cache, generate's compile)", eager,
                  compiled_generate_call(model, eager, image, n_out), 0))
    return paths


def compiled_generate_call(model, engine, image, n_out: int):
    """`make(n)` for greedy `generate` with a StaticCache reused across calls and a
    CompileConfig (mode reduce-overhead): the pre-issue-19 compiled path, bench only."""
    import torch
    from transformers import CompileConfig, StaticCache

    from spatialthinker_ros.core.prefix_cache import cache_kwarg

    question, choices = QUESTION
    prepared = engine.prepare_image(image)
    prompt = engine.prompt_for(prepared, question, choices)
    cache = StaticCache(config=model.config.get_text_config(decoder=True),
                        max_cache_len=-(-(2048 + n_out) // 128) * 128)  # fmt: skip
    config = CompileConfig(mode="reduce-overhead")
    config._compile_all_devices = True  # the --cpu-smoke run too

    def make(n: int):
        def call():
            inputs = engine.backend.encode(prepared.image, prompt)
            with torch.inference_mode():  # the cache's tensors are inference tensors
                cache.reset()
                out = model.generate(**inputs, do_sample=False, max_new_tokens=n,
                                     compile_config=config, **{cache_kwarg(model): cache})
            return tuple(out[0, inputs["input_ids"].shape[1]:].tolist())
        return call
    return make


def profile_if_short(report: Report, compiled, make, rates: dict, ceiling: float,
                     cuda: bool) -> None:  # fmt: skip
    """Under 60% of the ceiling: where one answer's decode time goes (torch.profiler, the top
    operations by device time)."""
    rate = rates.get(LOOP_ROW)
    if rate is None or rate >= 0.6 * ceiling:
        return
    from torch.profiler import ProfilerActivity, profile

    try:
        call = make(64)
        with no_end_token(compiled.backend.model):
            call()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=activities) as prof:
                call()
        key = "device_time_total" if cuda else "cpu_time_total"
        rows = []
        for event in sorted(prof.key_averages(), key=lambda e: -getattr(e, key, 0))[:15]:
            rows.append([event.key[:60], event.count, f"{getattr(event, key, 0) / 1e3:.2f}",
                         f"{event.cpu_time_total / 1e3:.2f}"])  # fmt: skip
        share = 100 * rate / ceiling
        report.line(f"## Profile of a 64-token answer on the decode loop ({share:.0f}% of the "
                    "ceiling: under 60%)")
        report.table("loop_profile", ["operation", "calls", "device ms" if cuda else "cpu ms",
                                      "cpu ms"], rows)  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        report.failure("decode loop profile", exc)


def verdict(report: Report, rates: dict, ceiling: float) -> None:
    card = rates.get("card (model card snippet)")
    best = rates.get(LOOP_ROW)
    if best is None:
        report.line("targets: the decode loop did not run")
        report.line()
        return
    share = best / ceiling
    report.line(f"targets (issue 19): decode loop {best:.0f} tok/s = {100 * share:.0f}% of the "
                f"ceiling (>= 60%: {'met' if share >= 0.6 else 'MISSED'}; goal 70%)"
                + (f"; {best / card:.1f}x the card snippet (>= 15x: "
                   f"{'met' if best >= 15 * card else 'MISSED'})" if card else ""))  # fmt: skip
    report.line()


def many(report, args, clock, eager, model, card_processor, image, n, peaks) -> None:
    """Four questions on one frame, n tokens each: card x4, answer_many (sequential
    continuation of the shared prefix), the batched continuation; token equality with the
    card's."""
    from spatialthinker_ros.core import prefix_cache
    from spatialthinker_ros.core.engine import SpatialThinkerEngine
    from spatialthinker_ros.core.prompt import question_text

    engine = SpatialThinkerEngine(dataclasses.replace(eager.config, max_new_tokens=n),
                                  eager.backend)  # fmt: skip
    prompts = [engine.prompt_for(engine.prepare_image(image), q, c) for q, c in QUESTIONS]

    def card_x4():
        return [card_snippet(model, card_processor, image, question_text(q, c), n,
                             force_length=False) for q, c in QUESTIONS]  # fmt: skip

    def answer_many():
        return [list(r.generated_token_ids) for r in engine.answer_many(image, QUESTIONS)]

    def batched():
        outputs = prefix_cache.generate_many(
            model, eager.backend.processor, image, prompts, batched=True,
            max_new_tokens=n)  # fmt: skip
        return [list(o.token_ids) for o in outputs]

    rows, card_time, card_ids = [], None, None
    with no_end_token(model):
        for name, call in (("card x4", card_x4), ("engine.answer_many", answer_many),
                           ("prefix_cache batched", batched)):
            with clock.peak(peaks, name):
                _, ids = clock.time(call)
                samples = tuple(clock.time(call)[0] for _ in range(args.repeats))
            stats = Stats(samples)
            card_time = card_time or stats.min
            card_ids = card_ids if card_ids is not None else ids
            same = sum(a == b for a, b in zip(ids, card_ids, strict=True))
            rows.append([name, f"{stats.min:.3f}", f"{stats.median:.3f}",
                         f"{stats.min / card_time:.2f}", f"{same}/{len(ids)}",
                         peaks.get(name, "-")])  # fmt: skip
    report.line(f"## 4 questions on one frame, {n} tokens each (eager)")
    report.table("four_questions", ["path", "min s", "median s", "vs card", "same ids as card",
                                    "peak GiB"], rows)  # fmt: skip


def preprocessing(report, args, clock, eager, cuda: bool) -> None:
    """CPU wall time of backend.encode per frame (image processor on the GPU under CUDA, and
    the token cache), against the processor on the CPU; and how far the GPU's pixels are from
    the CPU's."""
    from spatialthinker_ros.core.prompt import build_prompt

    backend = eager.backend
    backend.config = dataclasses.replace(backend.config, gpu_preprocess=True)  # the opt-in path
    repeats = 5 if args.cpu_smoke else 30
    rows = []
    for width, height in ((640, 480), (1920, 1080)):
        prepared = eager.prepare_image(noise_rgb(width, height, seed=3))
        prompt = build_prompt(QUESTION[0], *prepared.model_size, QUESTION[1])

        def engine_path(frame=prepared.image, prompt=prompt):
            return backend.encode(frame, prompt)

        def cpu_processor(frame=prepared.image, prompt=prompt):
            return backend.processor(text=[backend._chat_text(frame, prompt)], images=[frame],
                                     return_tensors="pt")  # fmt: skip

        results = {}
        for name, call in (("engine encode (GPU pixels + token cache)" if cuda else
                            "engine encode (token cache)", engine_path),
                           ("card processor on the CPU", cpu_processor)):  # fmt: skip
            call()
            samples = tuple(clock.time(call)[0] for _ in range(repeats))
            results[name] = call()
            stats = Stats(samples)
            rows.append([f"{width}x{height}", name, f"{stats.min * 1e3:.2f}",
                         f"{stats.median * 1e3:.2f}"])  # fmt: skip
        ours, card = results.values()
        diff = (ours["pixel_values"].float().cpu() - card["pixel_values"].float()).abs().max()
        same_ids = ours["input_ids"].cpu().tolist() == card["input_ids"].tolist()
        rows.append([f"{width}x{height}", "max abs pixel difference; ids equal",
                     f"{float(diff):.4f}", str(same_ids)])  # fmt: skip
    report.line("## Preprocessing per frame (wall ms, synchronised)")
    report.table("preprocessing", ["frame", "path", "min ms", "median ms"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
