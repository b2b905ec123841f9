"""The interface files' documentation and the LLM tool schema generated from it (no ROS): every
field is commented, the schema is what srv/AskSpatial.srv says (and follows it when it changes),
both output formats, the CLI, the install layout the schema is read from, and the tool-call
runner's refusal of bad arguments (before any client is involved)."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path
from typing import Any

import pytest
import setuptools

from spatialthinker_ros import bag_types, tool_schema
from spatialthinker_ros.cli import main as cli_main
from spatialthinker_ros.interface_docs import parse_interface, read_interface
from spatialthinker_ros.tool_schema import HIDDEN, parameters_schema, run_tool_call

ROOT = Path(__file__).resolve().parents[1]
INTERFACES = sorted([*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv"),
                     *ROOT.glob("action/*.action")])


@pytest.mark.parametrize("path", INTERFACES, ids=lambda p: p.name)
def test_every_field_and_constant_is_commented(path: Path) -> None:
    parsed = parse_interface(path.read_text(encoding="utf-8"))
    assert parsed.description, f"{path.name} has no leading comment"
    fields = [f for s in parsed.sections for f in s.fields]
    assert fields
    undocumented = [f.name for f in fields if not f.description]
    assert not undocumented, f"{path.name}: undocumented {undocumented}"


def test_parser_reads_groups_trailing_comments_and_sections() -> None:
    parsed = parse_interface(
        "# Doc line one.\n#\n# Doc line two.\n\n# Shared by a and b.\nint32 a\nint32 b\n\n"
        "uint8 K=3  # a constant\n# Own.\nstring[<=4] c  # extra\n---\n# Result.\nbool d\n")
    assert parsed.description == "Doc line one. Doc line two."
    first, second = parsed.sections
    assert [(f.name, f.description) for f in first.members] == [
        ("a", "Shared by a and b."), ("b", "Shared by a and b."), ("c", "Own. extra")]
    constant = first.fields[2]
    assert (constant.name, constant.constant, constant.value) == ("K", True, "3")
    assert constant.description == "a constant"
    assert first.field("c").base_type == "string" and first.field("c").is_array
    assert [(f.name, f.description) for f in second.fields] == [("d", "Result.")]
    for broken in ("lonely_type\n", "int32 9starts_with_a_digit\n"):
        with pytest.raises(ValueError, match="cannot read"):
            parse_interface(broken)


def test_action_goal_has_the_service_request_fields() -> None:
    request = read_interface("srv", "AskSpatial.srv").sections[0]
    goal = read_interface("action", "AskSpatial.action").sections[0]
    assert [(f.type, f.name) for f in goal.members] == [(f.type, f.name) for f in request.members]


def test_schema_is_the_srv_request() -> None:
    request = read_interface("srv", "AskSpatial.srv").sections[0]
    schema = parameters_schema()
    offered = [f for f in request.members if f.name not in HIDDEN]
    assert list(schema["properties"]) == [f.name for f in offered]
    for field in offered:
        assert schema["properties"][field.name]["description"] == field.description
    assert set(HIDDEN) <= {f.name for f in request.members}  # hidden ones still exist
    assert schema["properties"]["question"] == {
        "type": "string", "description": request.field("question").description}
    assert schema["properties"]["choices"]["type"] == "array"
    assert schema["properties"]["choices"]["items"] == {"type": "string"}
    assert schema["properties"]["max_image_age_s"]["type"] == "number"
    assert schema["required"] == ["question"] and schema["additionalProperties"] is False


def _interface_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    """msg/ and srv/ copied to tmp_path with `extra` appended to the srv request; the schema
    reads the copy."""
    for kind in ("msg", "srv"):
        shutil.copytree(ROOT / kind, tmp_path / kind)
    srv = tmp_path / "srv" / "AskSpatial.srv"
    request, response = srv.read_text(encoding="utf-8").split("---\n")
    srv.write_text(request + extra + "---\n" + response, encoding="utf-8")
    monkeypatch.setattr(bag_types, "interface_dir", lambda: tmp_path / "msg")


def test_schema_follows_a_changed_srv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = parameters_schema()
    _interface_copy(tmp_path, monkeypatch,
                    "# Look twice as hard (a new field).\nbool look_closer\n"
                    "# Pixels to crop on each side.\nuint16[] crop\n")
    after = parameters_schema()
    assert list(after["properties"]) == [*before["properties"], "look_closer", "crop"]
    assert after["properties"]["look_closer"] == {
        "type": "boolean", "description": "Look twice as hard (a new field)."}
    assert after["properties"]["crop"]["items"] == {"type": "integer", "minimum": 0,
                                                    "maximum": 65535}


def test_a_field_without_json_form_must_be_decided(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _interface_copy(tmp_path, monkeypatch, "# Where to look.\ngeometry_msgs/Point target\n")
    with pytest.raises(ValueError, match="'target'.*HIDDEN"):
        parameters_schema()


def test_openai_and_mcp_formats(capsys: pytest.CaptureFixture[str]) -> None:
    openai = tool_schema.tool_schema("openai")
    mcp = tool_schema.tool_schema("mcp")
    assert openai["type"] == "function"
    function = openai["function"]
    assert function["name"] == mcp["name"] == "ask_spatial"
    assert function["description"] == mcp["description"]
    assert function["description"].startswith(read_interface("srv", "AskSpatial.srv").description)
    assert function["parameters"] == mcp["inputSchema"] == parameters_schema()
    with pytest.raises(ValueError, match="format"):
        tool_schema.tool_schema("anthropic")
    for fmt, expected in (("openai", openai), ("mcp", mcp)):
        assert cli_main(["tool-schema", "--format", fmt]) == 0
        assert json.loads(capsys.readouterr().out) == expected
    assert cli_main(["tool-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == openai


def test_pip_install_puts_the_interfaces_where_the_schema_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup.py's data_files mirror the ROS install layout (share/<pkg>/{msg,srv,action});
    the schema read from such a tree equals the one from the source tree."""
    declared: dict[str, Any] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: declared.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    prefix = tmp_path / "prefix"
    for destination, files in declared["data_files"]:
        (prefix / destination).mkdir(parents=True)
        for name in files:
            shutil.copy(ROOT / name, prefix / destination)
    share = prefix / "share" / "spatialthinker_ros"
    assert {p.relative_to(share).as_posix() for p in share.rglob("*.*")} == {
        p.relative_to(ROOT).as_posix() for p in INTERFACES}
    source = tool_schema.tool_schema()
    monkeypatch.setattr(bag_types, "interface_dir", lambda: share / "msg")
    assert tool_schema.tool_schema() == source


# ------------------------------------------------------------------ tool-call arguments

BAD_ARGUMENTS = [
    ("not json {", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # json raises RecursionError there
    (b"\xff\xfe\x00", "not JSON"),
    ("[1, 2]", "JSON object"),
    (42, "JSON object"),
    ({}, "missing required argument 'question'"),
    ({"choices": ["left"]}, "missing required argument 'question'"),
    ({"question": "q", "look": True}, "unknown argument(s) look"),
    ({"question": 5}, "'question': expected string"),
    ({"question": None}, "'question': expected string"),
    ({"question": "q", "choices": "left"}, "'choices': expected an array"),
    ({"question": "q", "choices": ["left", 1]}, "'choices': item 1: expected string"),
    ({"question": "q", "max_image_age_s": "1"}, "'max_image_age_s': expected number"),
    ({"question": "q", "max_image_age_s": True}, "'max_image_age_s': expected number"),
    ({"question": "q", "max_image_age_s": float("nan")}, "'max_image_age_s': expected number"),
    ({"question": "q", "max_image_age_s": float("inf")}, "'max_image_age_s': expected number"),
    ({"question": "q", "not_before": 12.5}, "unknown argument(s) not_before"),
    ({"question": "q", "camera": ["front"]}, "'camera': expected string"),
]


@pytest.mark.parametrize(("arguments", "reason"), BAD_ARGUMENTS)
def test_bad_arguments_come_back_as_an_error_result(arguments: Any, reason: str) -> None:
    # No client: a bad call must be answered before anything would be asked.
    out = run_tool_call(None, arguments)
    assert out["status"] == "INVALID_REQUEST" and out["retryable"] is False
    assert reason in out["error"]
    json.dumps(out)
