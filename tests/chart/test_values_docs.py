"""values.yaml documents every key helm-docs style, and values.schema.json has the same keys.

helm-docs reads the ``# --`` comment right above a key; a documented key documents what is
under it. The schema (``additionalProperties: false`` on our objects) refuses a key it lacks,
so a key only in values.yaml breaks installs, and one only in the schema documents nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node

from tests.chart.render import CHART

pytestmark = pytest.mark.chart

VALUES = CHART / "values.yaml"
# Keys the schema allows that no values.yaml sets: Helm's own, and the render's scratch space.
SCHEMA_ONLY = {"global", "_generated"}


def leaves(
    node: Node, lines: list[str], path: str = "", documented: bool = False
) -> Iterator[tuple[str, bool]]:
    """(dotted path, documented) of each leaf: a value that is not a block mapping."""
    assert isinstance(node, MappingNode)
    for key, value in node.value:
        here = f"{path}.{key.value}" if path else key.value
        is_documented = documented or has_doc_comment(lines, key.start_mark.line)
        if isinstance(value, MappingNode) and not value.flow_style and value.value:
            yield from leaves(value, lines, here, is_documented)
        else:
            yield here, is_documented


def has_doc_comment(lines: list[str], line: int) -> bool:
    """Whether the comment block right above ``line`` starts with ``# --``."""
    indent = len(lines[line]) - len(lines[line].lstrip())
    above = line - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if len(lines[above]) - len(lines[above].lstrip()) != indent:
            break
        if lines[above].strip().startswith("# --"):
            return True
        above -= 1
    return False


def undocumented(text: str) -> list[str]:
    return [path for path, ok in leaves(yaml.compose(text), text.splitlines()) if not ok]


def test_every_value_has_a_doc_comment() -> None:
    missing = undocumented(VALUES.read_text())
    assert not missing, f"values.yaml keys without a `# --` comment (on them or above): {missing}"


def test_the_doc_check_sees_a_bare_key() -> None:
    text = "a:\n  # -- Documented.\n  b: 1\n  c: 2\n# -- A whole block.\nd:\n  e: {f: 1}\n"
    assert undocumented(text) == ["a.c"]


def key_paths(values: Any, schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(path, where it is missing) of every key one side has and the other lacks."""
    properties = schema.get("properties")
    if properties is None or not isinstance(values, dict):
        return  # a free-form object (resources, env): the schema does not name its keys
    skip = set() if path else SCHEMA_ONLY
    for key in sorted(set(values) | (set(properties) - skip)):
        here = f"{path}.{key}" if path else key
        if key not in properties:
            yield here, "values.schema.json"
        elif key not in values:
            yield here, "values.yaml"
        else:
            yield from key_paths(values[key], properties[key], here)


def test_the_schema_has_the_keys_of_values_yaml() -> None:
    values = yaml.safe_load(VALUES.read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    differences = [f"{path} is missing from {where}" for path, where in key_paths(values, schema)]
    assert not differences, "\n".join(differences)


def test_the_key_check_sees_a_key_on_one_side() -> None:
    schema = {"properties": {"a": {"properties": {"b": {}, "c": {}}}, "global": {}}}
    values = {"a": {"b": 1, "d": 2}}
    assert list(key_paths(values, schema)) == [
        ("a.c", "values.yaml"),
        ("a.d", "values.schema.json"),
    ]
