"""Compiled Avro readers (ledger/contract/avro.py) against fastavro, the reference: the same fields from every
event written with every shipped schema version, and no bytes accepted that fastavro rejects."""

from __future__ import annotations

import io

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from ledger.contract import schemas
from ledger.contract.avro import Unsupported, compile_reader
from ledger.contract.codec import HEADER_SIZE, MARKER, SHARED_TEXT_FIELDS, fastavro_reader, reader_of
from ledger.contract.events import TaskEvent
from tests.support.factories import any_event

CURRENT = schemas.current()
VERSIONS = schemas.versions()
COMPILED = {v.version: compile_reader(v.parsed, CURRENT.parsed, SHARED_TEXT_FIELDS) for v in VERSIONS}
REFERENCE = {v.version: fastavro_reader(v.parsed, CURRENT.parsed) for v in VERSIONS}


def branch_fields(version: schemas.SchemaVersion, name: str) -> list[str] | None:
    payload = next(f for f in version.parsed["fields"] if f["name"] == "payload")["type"]
    record = next((b for b in payload if b["name"] == name), None)
    return None if record is None else [f["name"] for f in record["fields"]]


def written_with(version: schemas.SchemaVersion, event: TaskEvent) -> bytes | None:
    """``event`` as a release writing ``version`` wrote it (None when that version has no such event)."""
    fields = branch_fields(version, event.avro_name)
    if fields is None:
        return None
    record = {name: getattr(event, name) for name in ("event_id", "task_id", "occurred_at", "principal", "actor")}
    record["payload"] = (event.avro_name, {name: getattr(event, name) for name in fields})
    buffer = io.BytesIO()
    buffer.write(MARKER + version.fingerprint)
    schemaless_writer(buffer, version.parsed, record)
    return buffer.getvalue()


@given(any_event, st.sampled_from(VERSIONS))
def test_every_event_of_every_version_reads_as_fastavro_reads_it(event: TaskEvent,
                                                                  version: schemas.SchemaVersion) -> None:
    data = written_with(version, event)
    if data is None:
        return
    name, fields, end = COMPILED[version.version](data, HEADER_SIZE)
    assert (name, fields, end) == REFERENCE[version.version](data, HEADER_SIZE)
    assert list(fields) == list(REFERENCE[version.version](data, HEADER_SIZE)[1])  # and in the same order
    assert end == len(data)
    if version is CURRENT:
        assert fields == event.__dict__


@given(any_event, st.data())
def test_damaged_bytes_are_never_read_where_fastavro_refuses_them(event: TaskEvent, data: st.DataObject) -> None:
    body = bytearray(written_with(CURRENT, event))
    damage = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    at = data.draw(st.integers(min_value=HEADER_SIZE, max_value=len(body) - 1))
    if damage == "flip":
        body[at] = data.draw(st.integers(min_value=0, max_value=255))
    elif damage == "cut":
        del body[at:]
    else:
        body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    damaged = bytes(body)
    try:
        ours = COMPILED[CURRENT.version](damaged, HEADER_SIZE)
    except Exception:  # refusing is always allowed; the codec reports it as a corrupt record
        return
    assert REFERENCE[CURRENT.version](damaged, HEADER_SIZE) == ours


def test_every_shipped_version_is_compiled() -> None:
    for version in VERSIONS:
        assert reader_of(version.parsed, CURRENT.parsed).__code__.co_filename.startswith("<avro reader")


def test_a_schema_beyond_the_compiled_readers_is_read_by_fastavro() -> None:
    schema = parse_schema({
        "type": "record", "name": "Event", "fields": [
            {"name": "task_id", "type": "string"},
            {"name": "payload", "type": [{"type": "record", "name": "Tagged", "fields": [
                {"name": "tags", "type": {"type": "map", "values": "string"}}]}]},
        ]})
    with pytest.raises(Unsupported, match="tags"):
        compile_reader(schema, schema)
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema, {"task_id": "t", "payload": ("Tagged", {"tags": {"a": "b"}})})
    assert reader_of(schema, schema)(buffer.getvalue(), 0) == ("Tagged", {"task_id": "t", "tags": {"a": "b"}},
                                                               len(buffer.getvalue()))
