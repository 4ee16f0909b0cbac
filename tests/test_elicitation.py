"""Requested schemas (from models or JSON schema) and validation of answers to them."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from ledger.contract.elicitation import (
    InvalidSchema,
    canonical_json,
    content_errors,
    field_errors,
    requested_schema,
    same_schema,
    schema_json,
)


class Dates(BaseModel):
    start_date: str
    nights: int
    note: str | None = None


def test_model_becomes_flat_schema_without_nulls() -> None:
    schema = requested_schema(Dates)
    assert schema["type"] == "object"
    assert schema["required"] == ["start_date", "nights"]
    assert schema["properties"]["note"] == {"title": "Note", "type": "string"}


def test_json_schema_is_taken_as_given_and_nested_objects_refused() -> None:
    given = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    assert requested_schema(given) is given
    with pytest.raises(InvalidSchema, match="'inner'"):
        requested_schema({"type": "object", "properties": {"inner": {"type": "object"}}})
    with pytest.raises(InvalidSchema):
        requested_schema({"type": "string"})


def test_canonical_json_does_not_depend_on_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


SCHEMA = canonical_json({
    "type": "object",
    "properties": {"start_date": {"type": "string", "format": "date"}, "nights": {"type": "integer", "minimum": 1}},
    "required": ["start_date", "nights"],
})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"start_date": "2026-12-01", "nights": 2}, None),
        ({"start_date": "2026-12-01"}, "'nights' is a required property"),
        ({"start_date": "tomorrow", "nights": 2}, "start_date: 'tomorrow' is not a 'date'"),
        ({"start_date": "2026-12-01", "nights": 0}, "nights: 0 is less than the minimum of 1"),
        ({"start_date": "2026-12-01", "nights": "2"}, "nights: '2' is not of type 'integer'"),
        # an integer is what JSON writes as one, as for tool arguments ("Book 1e+308 nights" was taken)
        ({"start_date": "2026-12-01", "nights": 5.0}, "nights: 5.0 is not of type 'integer'"),
        ({"start_date": "2026-12-01", "nights": 1e308}, "nights: 1e+308 is not of type 'integer'"),
        ({"start_date": "2026-12-01", "nights": True}, "nights: True is not of type 'integer'"),
        (["2026-12-01"], "content must be an object"),
    ],
)
def test_content_is_checked_against_the_requested_schema(content: object, problem: str | None) -> None:
    found = content_errors(SCHEMA, content)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_form_is_told_every_field_it_left_out_and_each_wrong_one() -> None:
    assert field_errors(SCHEMA, {}) == {"start_date": "required", "nights": "required"}
    assert field_errors(SCHEMA, {"start_date": "tomorrow"}) == {"start_date": "'tomorrow' is not a 'date'",
                                                                "nights": "required"}


def test_a_schema_is_recorded_in_its_fields_order_and_compared_in_any() -> None:
    recorded = schema_json(requested_schema(Dates))
    assert list(json.loads(recorded)["properties"]) == ["start_date", "nights", "note"]
    assert same_schema(canonical_json(json.loads(recorded)), recorded)  # recorded sorted, before the order was kept
    assert not same_schema(recorded, schema_json({**requested_schema(Dates), "required": ["nights"]}))
