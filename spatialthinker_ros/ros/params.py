"""The node's parameters: the engine options (`core.options`, read-only unless marked) plus the
node's own, validation, typed settings and their declaration.

Everything but `declare_parameters` / `descriptor_for` is free of rclpy, so the rules are
unit-testable. Read-only parameters take effect on configure; the others may change at runtime,
and every change is validated in full before anything is committed (bad values are refused with
a reason, never raised).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from ..core.options import (
    ENGINE_OPTIONS,
    EngineConfig,
    Option,
    engine_option_problems,
    option_problem,
)
from ..core.prompt import MAX_CHOICES, question_problem
from ..core.transforms import TF_MAX_FRAME_ID
from ..core.types import STOP_AFTER
from .topics import camera_name_problem

STRING_ARRAY = "string_array"  # marker default: a string array declared without a value
# The standing question's timer period is 1 / rate_hz: below this rate it is "off" in practice
# (one answer a day), and rclpy's timers overflow for periods near 2**63 ns.
MIN_RATE_HZ = 1e-3
MAX_CAMERAS = 16
MAX_FRAME_ID_CHARS = TF_MAX_FRAME_ID  # target_frame, as the frame ids tf input may carry
DEFAULT_CAMERAS = ("",)  # one camera on the node's own topics (image, depth, camera_info)


def credential_problem(name: str, value: Any) -> str | None:
    """Why `value` may not be parameter `name`'s because it holds a credential, or None. Every
    parameter value is published on /parameter_events and served to `ros2 param get`, so a
    credential must never be one: base_url may carry neither user:password@ nor a query (the
    API key comes from the environment variable api_key_env names). Never echoes the value."""
    if name != "base_url" or not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
        secret = parts.username is not None or parts.password is not None or bool(parts.query)
    except ValueError:
        secret = "@" in value or "?" in value
    if not secret:
        return None
    return ("base_url must not hold credentials (user:password@ or a query): parameters are "
            "published on /parameter_events; put the API key in the environment variable "
            "api_key_env names")


def _choices_problem(value: Any) -> str | None:
    choices = list(value or [])
    if len(choices) > MAX_CHOICES:
        return f"standing_choices holds at most {MAX_CHOICES} options; got {len(choices)}"
    if any(not isinstance(c, str) or not c.strip() for c in choices):
        return "standing_choices must not contain empty options"
    return None


def _names(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _cameras_problem(value: Any) -> str | None:
    names = _names(value)
    if not 1 <= len(names) <= MAX_CAMERAS:
        return f"cameras must name 1 to {MAX_CAMERAS} cameras; got {len(names)}"
    if "" in names and len(names) > 1:
        return ("cameras: the empty name (the node's own image topic) must be the only camera; "
                f"got {names!r}")
    for name in names:
        problem = camera_name_problem(name) if name != "" else None
        if problem is not None:
            return f"cameras: {problem}"
    if len(set(names)) != len(names):
        return f"cameras must not repeat a name; got {names!r}"
    return None


def _standing_cameras_problem(value: Any) -> str | None:
    names = _names(value or [])
    if any(not isinstance(n, str) for n in names):
        return f"standing_cameras must be camera names; got {names!r}"
    if len(set(names)) != len(names):
        return f"standing_cameras must not repeat a name; got {names!r}"
    return None


def frame_id_problem(value: Any) -> str | None:
    """Why `value` cannot be a tf2 frame id (target_frame), or None ("" = no target frame)."""
    if not isinstance(value, str):
        return f"target_frame must be a string; got {value!r}"
    if len(value) > MAX_FRAME_ID_CHARS:
        return f"target_frame must have at most {MAX_FRAME_ID_CHARS} characters; got {len(value)}"
    if value.startswith("/"):
        return f"target_frame must not start with '/' (tf2 frame ids do not); got {value!r}"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"target_frame must not contain spaces or control characters; got {value!r}"
    return None


def _rate_problem(value: Any) -> str | None:
    if 0.0 < value < MIN_RATE_HZ:
        return f"rate_hz must be 0 (off) or at least {MIN_RATE_HZ:g}; got {value!r}"
    return None


NODE_OPTIONS: tuple[Option, ...] = (
    Option("autostart", False, "Configure and activate on start (main() only)", kind=bool),
    Option(
        "cameras",
        list(DEFAULT_CAMERAS),
        'Camera names; a camera C reads C/image (C/image/compressed, C/depth, C/camera_info) and '
        'publishes C/debug_image; [""]: one camera on image, depth, camera_info',
        kind=list,
        check=_cameras_problem,
    ),
    Option(
        "rate_hz",
        1.0,
        "Rate of answering the standing question on the newest frame of each standing camera "
        "(cameras take turns); 0 disables standing questions",
        kind=float,
        float_range=(0.0, 30.0),
        check=_rate_problem,
        read_only=False,
    ),
    Option(
        "standing_question",
        "",
        "Question answered at rate_hz (also set by the question topic); empty: none",
        read_only=False,
    ),
    Option(
        "standing_choices",
        STRING_ARRAY,
        "Answer options of the standing question",
        kind=list,
        check=_choices_problem,
        read_only=False,
    ),
    Option(
        "standing_cameras",
        STRING_ARRAY,
        "Cameras the standing question is answered for, in turn; empty: every camera",
        kind=list,
        check=_standing_cameras_problem,
        read_only=False,
    ),
    Option(
        "standing_stop_after",
        "",
        "\"\" answers the standing question in full; scene_graph ends each answer as soon as "
        "its scene graph is complete (published on scene_graph; the answer has no option)",
        choices=STOP_AFTER,
        read_only=False,
    ),
    Option(
        "max_image_age_s",
        1.0,
        "Oldest acceptable image (stamp vs. now) for standing questions and requests that give "
        "none",
        kind=float,
        float_range=(0.001, 3600.0),
        read_only=False,
    ),
    Option(
        "max_future_stamp_s",
        0.5,
        "Frames stamped further than this ahead of the node's clock are invalid (clock skew)",
        kind=float,
        float_range=(0.0, 3600.0),
        read_only=False,
    ),
    Option(
        "max_queue",
        4,
        "Requests waiting behind the running one (busy_policy queue)",
        kind=int,
        int_range=(0, 64),
        read_only=False,
    ),
    Option(
        "busy_policy",
        "queue",
        "queue: wait in line up to max_queue, then BUSY; reject: BUSY whenever the model is busy",
        choices=("queue", "reject"),
        read_only=False,
    ),
    Option("use_compressed", False, "Subscribe image/compressed too (next activation)",
           kind=bool, read_only=False),
    Option("use_depth", False,
           "Subscribe depth + camera_info for 3D positions (next activation)",
           kind=bool, read_only=False),
    Option(
        "depth_stamp_tolerance_s",
        0.05,
        "Largest stamp gap between an image and the depth frame used for it",
        kind=float,
        float_range=(0.0, 1.0),
        read_only=False,
    ),
    Option(
        "target_frame",
        "",
        "Frame of the objects' positions and sizes (e.g. base_link), by tf2 at each image's "
        "stamp; empty: the camera's optical frame (the image's frame_id). Needs tf2_ros",
        check=frame_id_problem,
    ),
    Option(
        "transform_timeout_s",
        0.1,
        "Longest wait for target_frame's transform at an image's stamp (then: no positions, "
        "and the answer's status_message says why)",
        kind=float,
        float_range=(0.0, 5.0),
        read_only=False,
    ),
    Option("publish_debug_image", True, "Render debug_image (only while someone subscribes)",
           kind=bool, read_only=False),
)
PARAMETERS: tuple[Option, ...] = tuple(o for o in ENGINE_OPTIONS if o.node) + NODE_OPTIONS
PARAMETER_BY_NAME: dict[str, Option] = {o.name: o for o in PARAMETERS}


@dataclass(frozen=True)
class NodeSettings:
    """Typed snapshot of every parameter."""

    engine: EngineConfig
    autostart: bool
    cameras: tuple[str, ...]
    rate_hz: float
    standing_question: str
    standing_choices: tuple[str, ...]
    standing_cameras: tuple[str, ...]
    standing_stop_after: str
    max_image_age_s: float
    max_future_stamp_s: float
    max_queue: int
    busy_policy: str
    use_compressed: bool
    use_depth: bool
    depth_stamp_tolerance_s: float
    target_frame: str
    transform_timeout_s: float
    publish_debug_image: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeSettings:
        """Settings from parameter values (missing ones take their defaults); call only with
        values `validate_values` accepted."""
        merged = {**default_values(), **{k: v for k, v in values.items() if k in PARAMETER_BY_NAME}}
        for name in ("standing_choices", "standing_cameras", "cameras"):
            merged[name] = tuple(merged[name] or ())
        for name, opt in PARAMETER_BY_NAME.items():
            if opt.kind is float and isinstance(merged[name], int):
                merged[name] = float(merged[name])
        own = {f.name: merged[f.name] for f in fields(cls) if f.name != "engine"}
        return cls(engine=EngineConfig.from_options(merged), **own)

    @property
    def standing_order(self) -> tuple[str, ...]:
        """The cameras the standing question visits, in turn."""
        return self.standing_cameras or self.cameras

    def values(self) -> dict[str, Any]:
        """Every parameter's value, by name."""
        own = {k: v for k, v in asdict(self).items() if k != "engine"}
        engine = {o.name: getattr(self.engine, o.name) for o in ENGINE_OPTIONS if o.node}
        engine["prompt_style"] = self.engine.prompt_style.value
        return {**engine, **own}


def default_values() -> dict[str, Any]:
    def default(opt: Option) -> Any:
        if opt.default == STRING_ARRAY:
            return []
        return list(opt.default) if isinstance(opt.default, list) else opt.default

    return {o.name: default(o) for o in PARAMETERS}


def validate_value(name: str, value: Any) -> str | None:
    """Reason `value` is unacceptable for parameter `name` on its own, or None."""
    opt = PARAMETER_BY_NAME.get(name)
    if opt is None:
        return None  # not ours (use_sim_time, qos overrides, ...)
    secret = credential_problem(name, value)
    if secret is not None:
        return secret
    if opt.kind is list:
        return opt.check(value) if opt.check is not None else None
    return option_problem(opt, value)


def validate_values(values: Mapping[str, Any]) -> list[str]:
    """Every problem with a full set of values: single values and combinations."""
    merged = {**default_values(), **values}
    engine_names = {o.name for o in ENGINE_OPTIONS}
    problems = engine_option_problems({k: v for k, v in merged.items() if k in engine_names})
    for opt in NODE_OPTIONS:
        problem = validate_value(opt.name, merged[opt.name])
        if problem is not None:
            problems.append(problem)
    cameras, standing = merged["cameras"], merged["standing_cameras"] or []
    if not problems and any(name not in cameras for name in standing):
        problems.append(f"standing_cameras must be among cameras {list(cameras)!r}; "
                        f"got {list(standing)!r}")
    question, choices = merged["standing_question"], merged["standing_choices"] or []
    if isinstance(question, str) and question.strip() and not problems:
        problem = question_problem(question, list(choices), merged["max_question_chars"])
        if problem is not None:
            problems.append(f"standing_question: {problem}")
    return problems


def descriptor_for(opt: Option):
    """rcl_interfaces ParameterDescriptor with description, range and read_only."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    extra = f"one of: {', '.join(opt.choices)}" if opt.choices else ""
    descriptor = ParameterDescriptor(
        name=opt.name,
        description=opt.help,
        read_only=opt.read_only,
        additional_constraints=extra,
    )
    if opt.int_range is not None:
        descriptor.integer_range = [
            IntegerRange(from_value=opt.int_range[0], to_value=opt.int_range[1], step=1)
        ]
    if opt.float_range is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=opt.float_range[0], to_value=opt.float_range[1], step=0.0)
        ]
    return descriptor


def declare_parameters(node) -> tuple[dict[str, Any], list[str]]:
    """Declare every parameter on an rclpy node. Returns the values (overrides applied) and the
    problems found; an override rclpy refuses (wrong type, out of range) falls back to the
    default and is reported instead of raising."""
    from rcl_interfaces.msg import SetParametersResult
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
    from rclpy.parameter import Parameter

    values: dict[str, Any] = {}
    problems: list[str] = []
    refused: dict[str, str] = {}  # name -> credential problem (its value is never echoed)

    def refuse_credentials(params: list) -> SetParametersResult:
        for param in params:
            problem = credential_problem(param.name, param.value)
            if problem is not None:
                refused[param.name] = problem
                return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    # A refused override is never stored, so never published on /parameter_events nor served.
    node.add_on_set_parameters_callback(refuse_credentials)
    try:
        for opt in PARAMETERS:
            default = Parameter.Type.STRING_ARRAY if opt.default == STRING_ARRAY else opt.default
            try:
                param = node.declare_parameter(opt.name, default, descriptor_for(opt))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                # rclpy's message holds the value: not when the value is a credential.
                why = refused.get(opt.name) or exc
                problems.append(f"parameter {opt.name} rejected, default used: {why}")
                param = node.declare_parameter(
                    opt.name, default, descriptor_for(opt), ignore_override=True
                )
            if param.value is None and opt.default == STRING_ARRAY:
                # rclpy cannot infer a type from an empty default: initialise it explicitly.
                node.set_parameters([Parameter(opt.name, Parameter.Type.STRING_ARRAY, [])])
            values[opt.name] = (param.value if param.value is not None
                                else default_values()[opt.name])
    finally:
        node.remove_on_set_parameters_callback(refuse_credentials)
    problems += validate_values(values)
    return values, problems


def markdown_table() -> str:
    """The parameter table of the README, from the same specs the node declares (a test keeps
    the README equal to it: `python -m spatialthinker_ros.ros.params` prints it)."""

    def shown(opt: Option) -> str:
        value = [] if opt.default == STRING_ARRAY else opt.default
        return f"`{value!r}`".replace("'", '"') if not isinstance(value, bool) else f"`{value}`"

    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for opt in PARAMETERS:
        note = " (read-only)" if opt.read_only else ""
        rows.append(f"| `{opt.name}` | {shown(opt)} | {opt.help}{note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
