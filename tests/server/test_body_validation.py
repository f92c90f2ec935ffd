"""The compiled fast path of body validation never accepts what jsonschema refuses."""

from __future__ import annotations

import copy
import importlib
from typing import Any

import jsonschema
import pytest

from server.api import BodyValidator
from server.app import ROUTE_MODULES

ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 10**12, -(10**12), "", "x", "a\x00b", "é" * 41,
    "x" * 201, "00000000-0000-0000-0000-000000000000", "2026-11-25T10:00:00Z", "not a date",
    "#ff0000", [], [1], ["a", "a"], {}, {"unexpected": 1},
]


def json_bodies() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for module in ROUTE_MODULES:
        api = importlib.import_module(module).api if isinstance(module, str) else module.api
        specs += [(f"{s.method} {s.path}", s.body) for s in api.specs
                  if s.body is not None and s.request_content_type == "application/json"]
    return specs


def example(schema: dict[str, Any]) -> Any:
    """A value that tries to be valid: the first enum, lengths and bounds respected."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        return {name: example(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [example(schema.get("items", {}))] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return schema.get("minimum", 1.5)
    if kind == "boolean":
        return True
    return "a" * max(1, schema.get("minLength", 1))


def variants(schema: dict[str, Any], value: Any) -> list[Any]:
    """The value, and copies with each field (at any depth) replaced by odd values or left out."""
    out = [value, *ODD_VALUES]
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            for inner in variants(sub, value.get(name)):
                changed = copy.deepcopy(value)
                changed[name] = inner
                out.append(changed)
            without = {k: v for k, v in value.items() if k != name}
            out.append(without)
        out.append({**value, "extra": 1})
    elif isinstance(value, list) and value:
        out += [[inner] for inner in variants(schema.get("items", {}), value[0])]
        out.append(value * 60)
    return out


@pytest.mark.parametrize(("route", "schema"), json_bodies(), ids=[r for r, _ in json_bodies()])
def test_fast_path_agrees_with_jsonschema(route: str, schema: dict[str, Any]) -> None:
    validator = BodyValidator(schema)
    full = jsonschema.Draft202012Validator(schema)
    checked = 0
    for value in variants(schema, example(schema)):
        expected_valid = full.is_valid(value)
        assert (validator.errors(value) == []) == expected_valid, (route, value)
        checked += 1
    assert checked > len(ODD_VALUES)


def test_fast_path_is_used_for_plain_schemas_and_not_for_unknown_keywords() -> None:
    plain = BodyValidator({"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}})
    assert plain.fast is not None
    assert plain.errors({"qty": True}) and plain.errors({"qty": 0}) and not plain.errors({"qty": 2})
    newer = BodyValidator({"type": "object", "dependentRequired": {"a": ["b"]}})
    assert newer.fast is None  # draft-07 would ignore dependentRequired and accept {"a": 1}
    assert newer.errors({"a": 1})
