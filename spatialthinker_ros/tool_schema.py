"""The `ask` call as an LLM tool: its function-calling schema, and a runner for the calls.

`tool_schema()` is generated from srv/AskSpatial.srv (field names, types and the comments above
each field), so it never drifts from the interface. Fields an LLM cannot fill meaningfully are
left out (HIDDEN says why); a new field of a type with no JSON form must be added there, or the
schema refuses to build. `run_tool_call(client, arguments)` validates an LLM's arguments against
that schema, asks through a SpatialThinkerClient (or anything with its `ask`) and returns a
JSON-serialisable dict; it never raises for bad arguments or failed asks: those come back as
`{"error": ..., "status": ..., "retryable": ...}`. ROS-free: `spatialthinker-ros tool-schema`
needs no ROS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .core.spatial_result import SpatialThinkerError, error_to_json, result_to_json
from .core.text import loads_json, one_line
from .interface_docs import InterfaceField, read_interface

TOOL_NAME = "ask_spatial"
REQUIRED = ("question",)
# Request fields not offered to an LLM, and why.
HIDDEN = {
    "request_id": "the client sets a fresh one per ask",
    "not_before": "an absolute ROS time the LLM cannot know; planners pass it to client.ask",
}
RESULT_DOC = (
    "Returns JSON: status, answer, option, matched_choice, matched_index, observation, "
    "reasoning and scene_graph (objects with box [x_min, y_min, x_max, y_max] in image pixels, "
    "and, when depth is available, position [x, y, z] and size [x, y, z] in metres in the "
    "frame positions_frame_id names (the robot's frame, e.g. base_link, or the camera's "
    "optical frame); relations), or {error, status, retryable} when no answer could be given."
)
FORMATS = ("openai", "mcp")
# Argument errors carry the status the node gives a request it rejects.
INVALID = "INVALID_REQUEST"

_INTEGER_BITS = {"byte": (8, False), "char": (8, False), "int8": (8, True), "uint8": (8, False),
                 "int16": (16, True), "uint16": (16, False), "int32": (32, True),
                 "uint32": (32, False), "int64": (64, True), "uint64": (64, False)}


def json_type(type_name: str) -> dict[str, Any] | None:
    """JSON Schema of a ROS primitive type ("string<=10", "float32", "int8"), None otherwise."""
    if type_name in ("string", "wstring") or type_name.startswith(("string<=", "wstring<=")):
        schema: dict[str, Any] = {"type": "string"}
        if "<=" in type_name:
            schema["maxLength"] = int(type_name.split("<=")[1])
        return schema
    if type_name == "bool":
        return {"type": "boolean"}
    if type_name in ("float32", "float64"):
        return {"type": "number"}
    if type_name in _INTEGER_BITS:
        bits, signed = _INTEGER_BITS[type_name]
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return {"type": "integer", "minimum": low, "maximum": high}
    return None


def field_schema(field: InterfaceField) -> dict[str, Any]:
    element = json_type(field.base_type)
    if element is None:
        raise ValueError(f"request field {field.name!r} has type {field.type!r}, which has no "
                         "JSON form: map it in tool_schema.json_type or list it in HIDDEN")
    schema = {"type": "array", "items": element} if field.is_array else dict(element)
    if field.description:
        schema["description"] = field.description
    return schema


def parameters_schema() -> dict[str, Any]:
    """JSON Schema of the tool's arguments: AskSpatial.srv's request minus HIDDEN."""
    request = read_interface("srv", "AskSpatial.srv").sections[0]
    properties = {f.name: field_schema(f) for f in request.members if f.name not in HIDDEN}
    missing = [name for name in REQUIRED if name not in properties]
    if missing:
        raise ValueError(f"AskSpatial.srv has no request field {missing[0]!r}")
    return {"type": "object", "properties": properties, "required": list(REQUIRED),
            "additionalProperties": False}


def tool_description() -> str:
    return f"{read_interface('srv', 'AskSpatial.srv').description} {RESULT_DOC}"


def tool_schema(format: str = "openai") -> dict[str, Any]:
    """OpenAI function calling: {"type": "function", "function": {name, description,
    parameters}}; MCP: {name, description, inputSchema}."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if format == "mcp":
        return {"name": TOOL_NAME, "description": tool_description(),
                "inputSchema": parameters_schema()}
    return {"type": "function", "function": {"name": TOOL_NAME, "description": tool_description(),
                                             "parameters": parameters_schema()}}


# ------------------------------------------------------------------ running a tool call


def argument_problem(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> str | None:
    """Why `arguments` do not fit `schema` (the subset parameters_schema writes), or None."""
    properties = schema["properties"]
    unknown = sorted(str(k) for k in arguments if k not in properties)
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(properties)}"
    for name in schema["required"]:
        if name not in arguments:
            return f"missing required argument {name!r}"
    for name, value in arguments.items():
        problem = _value_problem(value, properties[name])
        if problem is not None:
            return f"argument {name!r}: {problem}"
    return None


def _value_problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    kind = schema["type"]
    if kind == "array":
        if not isinstance(value, list):
            return f"expected an array, got {type(value).__name__}"
        for index, item in enumerate(value):
            problem = _value_problem(item, schema["items"])
            if problem is not None:
                return f"item {index}: {problem}"
        return None
    if kind == "string":
        ok = isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "integer":
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and schema["minimum"] <= value <= schema["maximum"])
    else:  # number
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value))
    return None if ok else f"expected {kind}, got {one_line(repr(value))[:80]}"


def run_tool_call(client: Any, arguments: Any, **ask_options: Any) -> dict[str, Any]:
    """Run one LLM tool call: `arguments` (a dict, or its JSON text) -> validated ->
    `client.ask(**arguments, **ask_options)` -> a JSON-serialisable dict. `ask_options` are the
    caller's (timeout_s, retry_deadline_s, camera, ...), never the LLM's."""
    if isinstance(arguments, str | bytes):
        try:
            arguments = loads_json(arguments)
        except ValueError as exc:
            return _invalid(f"arguments are not JSON: {exc}")
    if not isinstance(arguments, Mapping):
        return _invalid(f"arguments must be a JSON object, got {type(arguments).__name__}")
    problem = argument_problem(arguments, parameters_schema())
    if problem is not None:
        return _invalid(problem)
    options = {**dict(arguments), **ask_options}
    try:
        result = client.ask(options.pop("question"), options.pop("choices", ()), **options)
    except SpatialThinkerError as exc:
        return error_to_json(exc)
    except (TypeError, ValueError) as exc:  # values the client refuses (e.g. broken Unicode)
        return _invalid(str(exc))
    return result_to_json(result)


def _invalid(message: str) -> dict[str, Any]:
    return {"error": one_line(message), "status": INVALID, "retryable": False}


def main(format: str = "openai") -> str:
    """The schema as the CLI prints it."""
    return json.dumps(tool_schema(format), indent=2, ensure_ascii=False)
