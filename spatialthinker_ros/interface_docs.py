"""The fields of our .msg/.srv/.action files: names, types and the comments that document them.

ROS-free (the LLM tool schema is generated from them, and `spatialthinker-ros tool-schema` runs
without ROS). A field's description is the comment block right above it; fields listed under one
comment without a blank line between share it (`uint32 image_width` / `uint32 image_height`);
a comment on the field's own line is added. The comment block at the top of a file, followed by
a blank line, documents the whole interface. '#' inside a default value is not supported (none
of our files has one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FIELD = re.compile(
    r"^(?P<type>[A-Za-z][\w/]*(?:<=\d+)?(?:\[(?:<=)?\d*\])?)\s+(?P<name>[A-Za-z]\w*)"
    r"\s*(?P<constant>=)?\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$"
)
_ARRAY = re.compile(r"\[(?:<=)?(\d*)\]$")


@dataclass(frozen=True)
class InterfaceField:
    type: str  # as written: "string", "string[]", "float32", "builtin_interfaces/Time"
    name: str
    description: str  # "" when undocumented
    constant: bool = False  # "uint8 STATUS_OK=0"
    value: str = ""  # the constant's value or the field's default, as written

    @property
    def base_type(self) -> str:
        """The element type: "string" for "string[]", "string<=5" stays bounded."""
        return _ARRAY.sub("", self.type)

    @property
    def is_array(self) -> bool:
        return _ARRAY.search(self.type) is not None


@dataclass(frozen=True)
class InterfaceSection:
    """One part of a file: a .msg has one, a .srv two (request, response), an .action three
    (goal, result, feedback)."""

    fields: tuple[InterfaceField, ...]

    def field(self, name: str) -> InterfaceField:
        return next(f for f in self.fields if f.name == name and not f.constant)

    @property
    def members(self) -> tuple[InterfaceField, ...]:
        """The fields that are not constants."""
        return tuple(f for f in self.fields if not f.constant)


@dataclass(frozen=True)
class InterfaceText:
    description: str  # the file's leading comment block
    sections: tuple[InterfaceSection, ...]


def parse_interface(text: str) -> InterfaceText:
    """Fields with their documentation, per section (see the module doc)."""
    sections: list[InterfaceSection] = []
    fields: list[InterfaceField] = []
    comments: list[str] = []
    header: str | None = None  # the leading block, once a blank line ended it
    shared = ""  # description of the field on the line above (no blank line between)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "---":
            if header is None and not fields and not sections and comments:
                header = " ".join(c for c in comments if c)
            comments, shared = [], ""
            if line == "---":
                sections.append(InterfaceSection(tuple(fields)))
                fields = []
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match is None:
            raise ValueError(f"cannot read interface line {raw!r}")
        constant = match["constant"] is not None
        own = " ".join(c for c in comments if c) or ("" if constant else shared)
        description = " ".join(p for p in (own, match["comment"] or "") if p)
        fields.append(InterfaceField(match["type"], match["name"], description.strip(), constant,
                                     match["value"].strip()))
        comments = []
        shared = "" if constant else own
    sections.append(InterfaceSection(tuple(fields)))
    return InterfaceText(header or "", tuple(sections))


def interface_path(kind: str, name: str) -> Path:
    """msg/srv/action file `name` ("AskSpatial.srv") wherever the interfaces are: the source
    tree, a pip install (share/spatialthinker_ros/<kind>) or a ROS install (the ament share
    folder): next to the folder holding the .msg files."""
    from .bag_types import interface_dir

    return interface_dir().parent / kind / name


def read_interface(kind: str, name: str) -> InterfaceText:
    return parse_interface(interface_path(kind, name).read_text(encoding="utf-8"))
