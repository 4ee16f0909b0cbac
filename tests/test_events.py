"""The pydantic models and the .avsc contract describe the same events."""

from __future__ import annotations

import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import given

from ledger.contract import schemas
from ledger.contract.codec import Codec
from ledger.contract.events import EVENT_TYPES, TaskEvent
from tests.support.factories import any_event

ENVELOPE = [f["name"] for f in schemas.current().source["fields"] if f["name"] != "payload"]
PAYLOAD_RECORDS = {
    f"ledger.{record['name']}": record
    for record in next(f for f in schemas.current().source["fields"] if f["name"] == "payload")["type"]
}


def test_every_payload_record_has_a_model_and_every_model_a_record() -> None:
    assert set(PAYLOAD_RECORDS) == set(EVENT_TYPES)


def test_envelope_matches_the_base_model() -> None:
    assert ENVELOPE == list(TaskEvent.model_fields)


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_model_fields_equal_schema_fields(name: str) -> None:
    schema_fields = ENVELOPE + [f["name"] for f in PAYLOAD_RECORDS[name]["fields"]]
    assert list(EVENT_TYPES[name].model_fields) == schema_fields


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_nullable_schema_fields_and_only_those_default_to_none(name: str) -> None:
    model = EVENT_TYPES[name]
    for field in PAYLOAD_RECORDS[name]["fields"]:
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        info = model.model_fields[field["name"]]
        assert (not info.is_required() and info.default is None) == nullable, field["name"]


codec = Codec()
contract = parse_schema(schemas.current().source)  # with logical types, as other Avro readers see it


@given(any_event)
def test_every_event_round_trips_through_its_schema(event: TaskEvent) -> None:
    fields = event.model_dump()
    payload = {name: fields.pop(name) for name in event._payload_names}
    assert validate({**fields, "payload": (event.avro_name, payload)}, contract, raise_errors=True)
    decoded = codec.decode(codec.encode(event))
    assert type(decoded) is type(event)
    assert decoded == event
    assert decoded.model_dump() == event.model_dump()


def test_a_decoded_event_copies_with_changes_like_a_constructed_one() -> None:
    event = EVENT_TYPES["ledger.TaskStarted"](task_id="t", actor="test:x", attempt=1)
    decoded = codec.decode(codec.encode(event))
    for original in (event, decoded):
        copied = original.model_copy(update={"task_id": "u"})
        assert (copied.task_id, copied.attempt, copied.event_id) == ("u", 1, event.event_id)
        assert original.task_id == "t"


def test_events_are_immutable() -> None:
    event = EVENT_TYPES["ledger.TaskStarted"](task_id="t", actor="test:x", attempt=1)
    with pytest.raises(Exception, match="frozen"):
        event.attempt = 2  # type: ignore[misc]


def test_invalid_event_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        EVENT_TYPES["ledger.ResponseSubmitted"](task_id="t", actor="test:x", elicitation_id="e", action="maybe")
