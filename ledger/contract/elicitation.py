"""Requested schemas and the answers to them: building, canonical form, validation.

A form elicitation asks for a flat object of primitive fields (MCP 2025-11-25, client/elicitation).
Tools may give a pydantic model or the JSON schema itself; either way the schema travels in the
log in one canonical JSON text, so a replay can compare the question it asks with the recorded one.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from pydantic import BaseModel

ANSWER_BY = "ledger/answer-by"  # the ``_meta`` key of a question's deadline (ISO 8601 UTC) in its request

PRIMITIVE_TYPES = frozenset({"string", "number", "integer", "boolean"})


class InvalidSchema(TypeError):
    """A requested schema that MCP elicitation cannot carry."""


def requested_schema(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """The restricted JSON schema for ``schema``: an object of primitive (or enum) fields."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        raw = schema.model_json_schema()
        properties = {name: _flatten(name, spec) for name, spec in raw.get("properties", {}).items()}
        result: dict[str, Any] = {"type": "object", "properties": properties}
        if raw.get("required"):
            result["required"] = list(raw["required"])
        return result
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise InvalidSchema("a requested schema must be a pydantic model or {'type': 'object', 'properties': {...}}")
    for name, spec in schema["properties"].items():
        if not isinstance(spec, dict) or (spec.get("type") not in PRIMITIVE_TYPES and "enum" not in spec and "oneOf" not in spec):
            raise InvalidSchema(f"field {name!r}: elicitation fields must be string, number, integer, boolean or enum")
    return schema


def _flatten(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    # pydantic writes Optional[X] as anyOf [X, null]; elicitation has no null, an absent field is the null.
    options = spec.get("anyOf")
    if options:
        concrete = [o for o in options if o.get("type") != "null"]
        if len(concrete) != 1:
            raise InvalidSchema(f"field {name!r}: unions cannot be asked for in an elicitation")
        spec = {**{k: v for k, v in spec.items() if k != "anyOf"}, **concrete[0]}
    if spec.get("default", 0) is None:
        spec = {k: v for k, v in spec.items() if k != "default"}
    if spec.get("type") not in PRIMITIVE_TYPES and "enum" not in spec:
        raise InvalidSchema(f"field {name!r}: elicitation fields must be string, number, integer, boolean or enum")
    return spec


def canonical_json(value: Any) -> str:
    """One text per JSON value, so recorded and replayed values compare byte for byte."""
    # allow_nan=False: the log holds standard JSON only (NaN is refused where it comes in, ledger.contract.values).
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def schema_json(schema: dict[str, Any]) -> str:
    """A question's schema as recorded: its fields in the order the tool wrote them, the order a person
    is asked them in (canonical_json would sort them)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def same_schema(recorded_json: str, asked_json: str) -> bool:
    """Whether two recorded schemas ask the same thing, whatever the order of their keys (schemas
    recorded before their order was kept are sorted)."""
    return recorded_json == asked_json or \
        canonical_json(json.loads(recorded_json)) == canonical_json(json.loads(asked_json))


# An integer is what JSON writes as one: 5.0 and 1e308 are numbers (JSON Schema's own checker takes
# them as integers), as pydantic's strict checks of tool arguments have them.
_StrictIntegers = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool)))


@lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    return _StrictIntegers(json.loads(schema_json), format_checker=FormatChecker())


def field_errors(schema_json: str, content: Any) -> dict[str, str]:
    """Each field of ``content`` that does not answer the schema, with why (a form shows it beside the field)."""
    if not isinstance(content, dict):
        return {"": "content must be an object"}
    errors: dict[str, str] = {}
    for error in _validator(schema_json).iter_errors(content):
        if error.validator == "required" and not error.path:
            for name in error.validator_value:  # every missing field, not the first over again
                if name not in content:
                    errors.setdefault(name, "required")
        else:
            errors.setdefault(str(error.path[0]) if error.path else "", error.message)
    return errors


def content_errors(schema_json: str, content: Any) -> str | None:
    """Why ``content`` does not answer the schema, or None when it does."""
    if not isinstance(content, dict):
        return "content must be an object"
    errors = sorted(_validator(schema_json).iter_errors(content), key=lambda e: list(e.path))
    if not errors:
        return None
    return "; ".join(f"{'.'.join(map(str, e.path)) or 'content'}: {e.message}" for e in errors[:5])
