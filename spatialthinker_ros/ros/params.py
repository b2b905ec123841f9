"""The node's parameters: one table of specs, validation, typed settings, declarations.

Everything but `declare_parameters` / `descriptor_for` is free of rclpy, so the validation rules
are unit-testable. Engine parameters are read-only (set them at launch; they take effect on
configure). The others may change at runtime; the node validates every change and rejects bad
values with a reason instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..core.engine import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_MODEL, EngineConfig
from ..core.prompt import MAX_CHOICES, PromptStyle

# Qwen2.5-VL's processor limits (4 and 16384 patches of 28 x 28 pixels).
PIXELS_FLOOR = 4 * 28 * 28
PIXELS_CEILING = 16384 * 28 * 28
# Largest camera image converted at all (8K); bigger frames are rejected, never allocated.
DEFAULT_MAX_IMAGE_PIXELS = 7680 * 4320
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
STRING_ARRAY = "string_array"  # marker default: a string array declared without a value


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "model",
        DEFAULT_MODEL,
        "Hugging Face id (org/name) or local directory of the model; remote code is never trusted",
        read_only=True,
    ),
    ParamSpec(
        "backend",
        "transformers",
        "Inference backend: transformers (in process) or openai (OpenAI-compatible server)",
        read_only=True,
        choices=("transformers", "openai"),
    ),
    ParamSpec(
        "base_url",
        "http://127.0.0.1:8000/v1",
        "backend openai: the server's OpenAI-compatible URL",
        read_only=True,
    ),
    ParamSpec(
        "api_model",
        "",
        "backend openai: served model name (empty: the model parameter)",
        read_only=True,
    ),
    ParamSpec(
        "api_key_env",
        "OPENAI_API_KEY",
        "backend openai: environment variable holding the "
        "API key (the key itself is never a parameter)",
        read_only=True,
    ),
    ParamSpec("device", "auto", "auto, cpu, cuda or cuda:N", read_only=True),
    ParamSpec(
        "dtype",
        "auto",
        "auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32",
        read_only=True,
        choices=("auto", "bfloat16", "float16", "float32"),
    ),
    ParamSpec(
        "attn_implementation",
        "sdpa",
        "auto, sdpa, eager or flash_attention_2",
        read_only=True,
        choices=("auto", "sdpa", "eager", "flash_attention_2"),
    ),
    ParamSpec(
        "min_pixels",
        DEFAULT_MIN_PIXELS,
        "Smallest image area fed to the model (pixels)",
        read_only=True,
        int_range=(PIXELS_FLOOR, PIXELS_CEILING),
    ),
    ParamSpec(
        "max_pixels",
        DEFAULT_MAX_PIXELS,
        "Largest image area fed to the model (pixels); camera frames are scaled down to fit",
        read_only=True,
        int_range=(PIXELS_FLOOR, PIXELS_CEILING),
    ),
    ParamSpec(
        "max_new_tokens",
        1024,
        "Most tokens generated per answer",
        read_only=True,
        int_range=(1, 8192),
    ),
    ParamSpec(
        "prompt_style",
        PromptStyle.CARD.value,
        "card (model card prompt) or paper_eval (the paper's evaluation prompt)",
        read_only=True,
        choices=tuple(s.value for s in PromptStyle),
    ),
    ParamSpec("autostart", False, "Configure and activate on start (main() only)", read_only=True),
    ParamSpec(
        "rate_hz",
        1.0,
        "Rate of answering the standing question on the newest frame; "
        "0 disables standing questions",
        float_range=(0.0, 30.0),
    ),
    ParamSpec(
        "standing_question",
        "",
        "Question answered at rate_hz (also set by the question topic); empty: none",
    ),
    ParamSpec("standing_choices", STRING_ARRAY, "Answer options of the standing question"),
    ParamSpec(
        "max_image_age_s",
        1.0,
        "Oldest acceptable image (stamp vs. now) for standing "
        "questions and requests that give none",
        float_range=(0.001, 3600.0),
    ),
    ParamSpec(
        "max_queue",
        4,
        "Requests waiting behind the running one (busy_policy queue)",
        int_range=(0, 64),
    ),
    ParamSpec(
        "busy_policy",
        "queue",
        "queue: wait in line up to max_queue, then BUSY; reject: BUSY whenever the model is busy",
        choices=("queue", "reject"),
    ),
    ParamSpec(
        "timeout_s",
        60.0,
        "Longest inference; past it the answer is TIMEOUT",
        float_range=(0.1, 3600.0),
    ),
    ParamSpec(
        "max_question_chars", 2000, "Longest accepted question (characters)", int_range=(1, 100_000)
    ),
    ParamSpec(
        "max_image_pixels",
        DEFAULT_MAX_IMAGE_PIXELS,
        "Largest camera image converted (pixels); bigger frames are rejected",
        int_range=(1, 1 << 28),
    ),
    ParamSpec("use_compressed", False, "Subscribe image/compressed too (next activation)"),
    ParamSpec(
        "use_depth", False, "Subscribe depth + camera_info for 3D positions (next activation)"
    ),
    ParamSpec(
        "depth_stamp_tolerance_s",
        0.05,
        "Largest stamp gap between an image and the depth frame used for it",
        float_range=(0.0, 1.0),
    ),
    ParamSpec("publish_debug_image", True, "Render debug_image (only while someone subscribes)"),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class NodeSettings:
    """Typed snapshot of every parameter."""

    model: str
    backend: str
    base_url: str
    api_model: str
    api_key_env: str
    device: str
    dtype: str
    attn_implementation: str
    min_pixels: int
    max_pixels: int
    max_new_tokens: int
    prompt_style: str
    autostart: bool
    rate_hz: float
    standing_question: str
    standing_choices: tuple[str, ...]
    max_image_age_s: float
    max_queue: int
    busy_policy: str
    timeout_s: float
    max_question_chars: int
    max_image_pixels: int
    use_compressed: bool
    use_depth: bool
    depth_stamp_tolerance_s: float
    publish_debug_image: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeSettings:
        """Settings from parameter values (missing ones take their defaults)."""
        merged = dict(default_values())
        merged.update({k: v for k, v in values.items() if k in SPEC_BY_NAME})
        merged["standing_choices"] = tuple(merged["standing_choices"] or ())
        for f in fields(cls):
            spec = SPEC_BY_NAME[f.name]
            if isinstance(spec.default, float) and isinstance(merged[f.name], int):
                merged[f.name] = float(merged[f.name])
        return cls(**{f.name: merged[f.name] for f in fields(cls)})

    def engine_config(self) -> EngineConfig:
        return EngineConfig.from_options(asdict(self))


def default_values() -> dict[str, Any]:
    return {s.name: ([] if s.default == STRING_ARRAY else s.default) for s in SPECS}


def validate_model(model: str) -> str | None:
    """Reason the model reference is unacceptable, or None. Accepted: an existing local
    directory, or a hub id `org/name`. Never a file, never a path climbing with `..`."""
    if not isinstance(model, str) or not model.strip():
        return "model must name a hub id (org/name) or a local directory"
    model = model.strip()
    if ".." in model:
        return f"model {model!r} must not contain '..'"
    if "\x00" in model:
        return "model must not contain NUL characters"
    path = Path(model).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"model path {model!r} is not a directory"
    if HUB_ID.match(model):
        return None
    return f"model {model!r} is neither an existing directory nor a hub id like org/name"


def validate_value(name: str, value: Any) -> str | None:
    """Reason `value` is unacceptable for parameter `name` on its own, or None."""
    spec = SPEC_BY_NAME.get(name)
    if spec is None:
        return None  # not ours (use_sim_time, qos overrides, ...)
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.int_range is not None:
        lo, hi = spec.int_range
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            return f"{name} must be an integer in [{lo}, {hi}]; got {value!r}"
    if spec.float_range is not None:
        lo, hi = spec.float_range
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value  # NaN
            or not lo <= value <= hi
        ):
            return f"{name} must be a number in [{lo}, {hi}]; got {value!r}"
    if name == "model":
        return validate_model(value)
    if name == "base_url" and not (
        isinstance(value, str) and re.fullmatch(r"https?://[^\s]+", value)
    ):
        return f"base_url must be an http(s) URL; got {value!r}"
    if name == "device":
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            return f"device must be auto, cpu, cuda or cuda:N; got {value!r}"
    if name == "standing_choices":
        choices = list(value or [])
        if len(choices) > MAX_CHOICES:
            return f"standing_choices holds at most {MAX_CHOICES} options; got {len(choices)}"
        if any(not str(c).strip() for c in choices):
            return "standing_choices must not contain empty options"
    return None


def validate_values(values: Mapping[str, Any]) -> list[str]:
    """Every problem with a full set of values, single values and combinations."""
    problems = [p for name, v in values.items() if (p := validate_value(name, v)) is not None]
    merged = {**default_values(), **values}
    if (
        isinstance(merged["min_pixels"], int)
        and isinstance(merged["max_pixels"], int)
        and merged["min_pixels"] > merged["max_pixels"]
    ):
        problems.append(
            f"min_pixels ({merged['min_pixels']}) must not exceed "
            f"max_pixels ({merged['max_pixels']})"
        )
    question, limit = merged["standing_question"], merged["max_question_chars"]
    if isinstance(question, str) and isinstance(limit, int) and len(question) > limit:
        problems.append(f"standing_question is longer than max_question_chars ({limit})")
    return problems


def check_question(question: str, choices: Sequence[str], max_chars: int) -> str | None:
    """Reason a request's question is unacceptable (INVALID_REQUEST), or None."""
    if not question or not question.strip():
        return "question is empty"
    if len(question) > max_chars:
        return f"question has {len(question)} characters; max_question_chars is {max_chars}"
    if len(choices) > MAX_CHOICES:
        return f"at most {MAX_CHOICES} choices are supported; got {len(choices)}"
    if any(not c.strip() for c in choices):
        return "choices must not be empty strings"
    if sum(len(c) for c in choices) > max_chars:
        return f"choices are longer than max_question_chars ({max_chars}) in total"
    return None


def descriptor_for(spec: ParamSpec):
    """rcl_interfaces ParameterDescriptor with description, range and read_only."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    extra = f"one of: {', '.join(spec.choices)}" if spec.choices else ""
    descriptor = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        read_only=spec.read_only,
        additional_constraints=extra,
    )
    if spec.int_range is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)
        ]
    if spec.float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(
                from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0
            )
        ]
    return descriptor


def declare_parameters(node) -> tuple[dict[str, Any], list[str]]:
    """Declare every parameter on an rclpy node. Returns the values (overrides applied) and the
    problems found; an override rclpy refuses (wrong type, out of range) falls back to the
    default and is reported instead of raising."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in SPECS:
        default = Parameter.Type.STRING_ARRAY if spec.default == STRING_ARRAY else spec.default
        try:
            param = node.declare_parameter(spec.name, default, descriptor_for(spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            problems.append(f"parameter {spec.name} rejected, default used: {exc}")
            param = node.declare_parameter(
                spec.name, default, descriptor_for(spec), ignore_override=True
            )
        if param.value is None and spec.default == STRING_ARRAY:
            # rclpy cannot infer a type from an empty default: initialise it explicitly.
            node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])])
        values[spec.name] = param.value if param.value is not None else default_values()[spec.name]
    problems += validate_values(values)
    return values, problems
