"""Engine options, defined once: type, default, allowed values and help of each.

`EngineConfig`'s fields carry their `Option` (see `option(...)`); `ENGINE_OPTIONS` lists them.
The CLI builds its arguments from that table (`cli.add_engine_arguments`), the node declares
its read-only parameters from it (`ros.params`), and `EngineConfig.validate` checks values with
the same rules (`option_problem`). Adding an engine option means adding one field here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .prompt import PromptStyle
from .types import ModelLoadError

DEFAULT_MODEL = "OX-PIXL/SpatialThinker-3B"
# Qwen2.5-VL processor's floor (4 * 28 * 28) and a ~1 MP ceiling (1280 * 28 * 28): a 640x480
# frame is fed as 644x476 (391 visual tokens); 1080p is scaled down to fit.
DEFAULT_MIN_PIXELS = 3136
DEFAULT_MAX_PIXELS = 1_003_520
# Qwen2.5-VL's processor limits (4 and 16384 patches of 28 x 28 pixels).
PIXELS_FLOOR = 4 * 28 * 28
PIXELS_CEILING = 16384 * 28 * 28
# Largest input image decoded at all (8K); bigger images are rejected, never allocated.
DEFAULT_MAX_IMAGE_PIXELS = 7680 * 4320

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
HTTP_URL = re.compile(r"https?://\S+")

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Option:
    """One option or parameter: what the CLI, the node's descriptors and validation read."""

    name: str
    default: Any
    help: str
    kind: type = str  # str, int, float or bool
    choices: tuple[str, ...] = ()
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    check: Check | None = None  # further rule: the reason a value is bad, or None
    cli_flag: str = ""  # "" = --name-with-dashes
    cli: bool = True  # offered on the command line
    cli_const: Any = None  # the value of the bare flag (`--compile` = on), when it may be bare
    node: bool = True  # declared as a node parameter
    read_only: bool = True  # node: only takes effect on configure
    group: str = "model"  # CLI help group

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.name.replace("_", "-")


def option(default: Any, help: str, **spec: Any) -> Any:
    """An EngineConfig field whose metadata holds its Option (name and kind from the field)."""
    return field(default=default, metadata={"option": spec | {"help": help}})


def model_reference_problem(model: object) -> str | None:
    """Why `model` is not an existing local directory or a hub id `org/name`, or None. Never a
    file, never a path climbing with `..`, never anything executable."""
    if not isinstance(model, str) or not model.strip():
        return "model must name a hub id (org/name) or a local directory"
    model = model.strip()
    if "\x00" in model:
        return "model must not contain NUL characters"
    if ".." in model:
        return f"model {model!r} must not contain '..'"
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"model path {model!r} is not a directory"
        if not (path / "config.json").is_file():
            return f"model directory {model!r} has no config.json"
        return None
    if model.startswith(("/", ".", "~")) or not HUB_ID.fullmatch(model):
        return f"model directory {model!r} does not exist (and it is not a hub id like org/name)"
    return None


def _device_problem(value: object) -> str | None:
    if isinstance(value, str) and DEVICE.fullmatch(value):
        return None
    return f"device must be auto, cpu, cuda or cuda:N; got {value!r}"


def _url_problem(value: object) -> str | None:
    if isinstance(value, str) and HTTP_URL.fullmatch(value):
        return None
    return "base_url must be an http(s) URL"  # never echoed: it may hold credentials


@dataclass(frozen=True)
class EngineConfig:
    model: str = option(
        DEFAULT_MODEL,
        "Hugging Face id (org/name) or local directory of the model; remote code is never trusted",
        check=model_reference_problem,
    )
    backend: str = option(
        "transformers",
        "Inference backend: transformers (in process) or openai (OpenAI-compatible server)",
        choices=("transformers", "openai"),
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N", check=_device_problem)
    dtype: str = option(
        "auto",
        "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32",
        choices=("auto", "bfloat16", "float16", "float32"),
    )
    attn_implementation: str = option(
        "auto",
        "auto (flash_attention_2 when installed on a GPU, else sdpa), sdpa, eager or "
        "flash_attention_2",
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
        cli_flag="--attn",
    )
    min_pixels: int = option(
        DEFAULT_MIN_PIXELS,
        "Smallest image area fed to the model (pixels)",
        int_range=(PIXELS_FLOOR, PIXELS_CEILING),
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "Largest image area fed to the model (pixels); larger frames are scaled down to fit",
        int_range=(PIXELS_FLOOR, PIXELS_CEILING),
    )
    max_image_pixels: int = option(
        DEFAULT_MAX_IMAGE_PIXELS,
        "Largest input image accepted at all (pixels); bigger images are rejected unread",
        int_range=(1, 1 << 28),
        read_only=False,
    )
    max_new_tokens: int = option(1024, "Most tokens generated per answer", int_range=(1, 8192))
    max_question_chars: int = option(
        2000,
        "Longest accepted question (characters); choices count together against it too",
        int_range=(1, 100_000),
        read_only=False,
    )
    prompt_style: PromptStyle = option(
        PromptStyle.CARD,
        "card (model card prompt) or paper_eval (the paper's evaluation prompt)",
        choices=tuple(s.value for s in PromptStyle),
    )
    compile: str = option(
        "auto",
        "Our own decode loop: static KV cache and a torch.compile'd one-token step (CUDA graphs "
        "on a GPU), compiled while the model loads (about a minute on a GPU): auto (on with "
        "CUDA, off on the CPU), on (a failed compile fails the load) or off",
        choices=("auto", "on", "off"),
        cli_const="on",
    )
    quantization: str = option(
        "none",
        "Weight-only quantization of the language model's linear layers at load (torchao; "
        "vision tower, embedding and lm_head stay in dtype): none, int8 (per-row) or int4 "
        "(groups of 128; on CUDA needs bfloat16 and an sm80+ GPU). A device without the "
        "kernel fails the load",
        choices=("none", "int8", "int4"),
    )
    prompt_lookup: int = option(
        0,
        "Prompt-lookup decoding: draft up to N tokens from where the last tokens already occur "
        "in the prompt or the answer so far, verified in one forward pass (greedy: same tokens, "
        "fewer passes; through generate, so it replaces the compiled loop); 0 = off",
        int_range=(0, 64),
    )
    gpu_preprocess: bool = option(
        False,
        "Resize and normalise frames on the GPU (an H200 saves ~3 ms a 640x480 frame and ~10 ms "
        "at 1080p); the pixels then differ slightly from the model card's CPU processor, enough "
        "to change greedy tokens, so it is off by default",
    )
    # answer_many: decode the questions as one batch (fastest; may differ from one-by-one greedy
    # output in near-ties on GPUs) instead of one after another from the shared prefix cache.
    batch_questions: bool = option(
        False,
        "Several questions about one frame decode as one batch (faster on a GPU; bf16 may flip "
        "near-ties) instead of one after another from the shared image prefix",
    )
    base_url: str = option(
        "http://127.0.0.1:8000/v1",
        "backend openai: the server's OpenAI-compatible URL",
        check=_url_problem,
        group="remote backend (--backend openai)",
    )
    api_model: str = option(
        "",
        "backend openai: served model name (empty: the model)",
        group="remote backend (--backend openai)",
    )
    api_key_env: str = option(
        "OPENAI_API_KEY",
        "backend openai: environment variable holding the API key (the key itself is never an "
        "option)",
        group="remote backend (--backend openai)",
    )
    timeout_s: float = option(
        60.0,
        "Longest answer in seconds (generation, or the whole remote request); past it: timeout. "
        "In the node it counts from the request's arrival (waiting for not_before and in the "
        "queue included)",
        float_range=(0.1, 3600.0),
        cli_flag="--timeout",
        read_only=False,
    )
    retries: int = option(
        2,
        "backend openai: retries after a connection failure (with backoff)",
        int_range=(0, 10),
        group="remote backend (--backend openai)",
    )

    def __post_init__(self) -> None:
        # prompt_style given by name ("paper_eval") is the enum from here on; an unknown name is
        # left for validate() to report.
        if isinstance(self.prompt_style, str) and not isinstance(self.prompt_style, PromptStyle):
            known = {s.value: s for s in PromptStyle}
            if self.prompt_style in known:
                object.__setattr__(self, "prompt_style", known[self.prompt_style])

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EngineConfig:
        """The config from any mapping holding some of its field names (CLI arguments, node
        parameters); other keys are ignored, missing fields keep their defaults."""
        values = {f.name: options[f.name] for f in fields(cls) if f.name in options}
        if "prompt_style" in values and not isinstance(values["prompt_style"], PromptStyle):
            try:
                values["prompt_style"] = PromptStyle(values["prompt_style"])
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
        if isinstance(values.get("model"), str):
            values["model"] = values["model"].strip()
        return cls(**values)

    def problems(self) -> list[str]:
        """Every bad option, one reason each."""
        return engine_option_problems({f.name: _plain(getattr(self, f.name)) for f in fields(self)})

    def validate(self) -> None:
        """Raise ModelLoadError naming every bad option."""
        problems = self.problems()
        if problems:
            raise ModelLoadError("; ".join(problems))

    def with_options(self, **changes: Any) -> EngineConfig:
        return replace(self, **changes)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, PromptStyle) else value


def _engine_options() -> tuple[Option, ...]:
    table = []
    for f in fields(EngineConfig):
        spec = dict(f.metadata["option"])
        default = _plain(f.default) if f.default is not MISSING else None
        kind = type(default) if default is not None else str
        table.append(Option(name=f.name, default=default, kind=kind, **spec))
    return tuple(table)


ENGINE_OPTIONS: tuple[Option, ...] = _engine_options()
OPTION_BY_NAME: dict[str, Option] = {o.name: o for o in ENGINE_OPTIONS}


def engine_option_problems(values: Mapping[str, Any]) -> list[str]:
    """Every problem with the engine options among `values` (plain values: prompt_style as its
    string), single values and combinations."""
    found = []
    for name, value in values.items():
        opt = OPTION_BY_NAME.get(name)
        if opt is None:
            continue
        if name == "model" and values.get("backend") == "openai":
            # A served model name, not something to load: any non-empty name.
            problem = None if isinstance(value, str) and value.strip() else "model is empty"
        else:
            problem = option_problem(opt, value)
        if problem is not None:
            found.append(problem)
    if values.get("backend") == "openai" and values.get("quantization", "none") != "none":
        found.append("quantization applies to the in-process transformers backend; with backend "
                     "openai the server's own quantization applies")
    low, high = values.get("min_pixels"), values.get("max_pixels")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        found.append(f"min_pixels ({low}) must not exceed max_pixels ({high})")
    return found


def option_problem(opt: Option, value: Any) -> str | None:
    """Why `value` is unacceptable for `opt`, or None."""
    if opt.kind is bool:
        if not isinstance(value, bool):
            return f"{opt.name} must be true or false; got {value!r}"
    elif opt.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{opt.name} must be an integer; got {value!r}"
    elif opt.kind is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return f"{opt.name} must be a finite number; got {value!r}"
    elif not isinstance(value, str):
        return f"{opt.name} must be a string; got {value!r}"
    if opt.choices and value not in opt.choices:
        return f"{opt.name} must be one of {', '.join(opt.choices)}; got {value!r}"
    if opt.int_range is not None and not opt.int_range[0] <= value <= opt.int_range[1]:
        return (
            f"{opt.name} must be an integer in [{opt.int_range[0]}, {opt.int_range[1]}]; "
            f"got {value!r}"
        )
    if opt.float_range is not None and not opt.float_range[0] <= value <= opt.float_range[1]:
        return (
            f"{opt.name} must be a number in [{opt.float_range[0]}, {opt.float_range[1]}]; "
            f"got {value!r}"
        )
    return opt.check(value) if opt.check is not None else None
