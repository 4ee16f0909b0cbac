"""Single-object encoding: header, errors on bad bytes, and reading older schema versions."""

from __future__ import annotations

import io

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from hypothesis import given
from hypothesis import strategies as st

from ledger.contract import schemas
from ledger.contract.codec import MARKER, Codec, CorruptRecord, DecodeError, UnknownSchema
from ledger.contract.events import ResponseSubmitted, TaskCreated
from tests.support.factories import sample

codec = Codec()


def test_header_is_marker_and_little_endian_crc64_of_canonical_form() -> None:
    data = codec.encode(sample(TaskCreated, "t1"))
    canonical = to_parsing_canonical_form(parse_schema(schemas.current().source))
    assert data[:2] == MARKER == b"\xc3\x01"
    assert data[2:10] == bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    # Avro spec test vector: CRC-64-AVRO("null") = 0x63dd24e7cc258f8a, written little-endian.
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == (0x63DD24E7CC258F8A).to_bytes(8, "little")


def test_unknown_fingerprint_is_named() -> None:
    data = bytearray(codec.encode(sample(TaskCreated, "t1")))
    data[2:10] = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    with pytest.raises(UnknownSchema, match="0102030405060708") as raised:
        codec.decode(bytes(data))
    assert raised.value.fingerprint == bytes(range(1, 9))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"{\"json\": true}", b"\xc3\x01" + b"\x00" * 7],
    ids=["empty", "marker-only", "json", "short-fingerprint"],
)
def test_not_single_object_encoded(data: bytes) -> None:
    with pytest.raises(CorruptRecord):
        codec.decode(data)


def test_truncated_body() -> None:
    data = codec.encode(sample(TaskCreated, "t1"))
    with pytest.raises(CorruptRecord):
        codec.decode(data[:-5])


def test_trailing_bytes() -> None:
    data = codec.encode(sample(TaskCreated, "t1"))
    with pytest.raises(CorruptRecord, match="trailing"):
        codec.decode(data + b"\x00")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_header_fail_only_with_decode_errors(body: bytes) -> None:
    try:
        codec.decode(MARKER + codec.fingerprint + body)
    except DecodeError:
        pass


def test_shipped_versions_are_ordered_and_distinct() -> None:
    versions = schemas.versions()
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert len({v.fingerprint for v in versions}) == len(versions)
    assert schemas.current() is versions[-1]


def _write_with(version: schemas.SchemaVersion, record: dict) -> bytes:
    buffer = io.BytesIO()
    buffer.write(MARKER + version.fingerprint)
    schemaless_writer(buffer, version.parsed, record)
    return buffer.getvalue()


def test_record_written_with_version_1_decodes_with_the_current_reader() -> None:
    v1 = schemas.versions()[0]
    assert v1.version == 1 and schemas.current().version >= 2
    record = {
        "event_id": "6f1c0b8e-2d7a-4c55-9a51-0d5a1f3f2e10",
        "task_id": "task-1",
        "occurred_at": 1_795_000_000_000,
        "principal": "alice",
        "actor": "server:old",
        "payload": ("ledger.ResponseSubmitted", {"elicitation_id": "e1", "action": "decline", "content_json": None}),
    }
    event = codec.decode(_write_with(v1, record))
    assert isinstance(event, ResponseSubmitted)
    assert event.action == "decline" and event.principal == "alice"
    assert event.protocol is None  # added in version 2, defaulted for old records


def test_version_1_has_no_protocol_field_and_version_2_adds_it() -> None:
    def fields_of(version: schemas.SchemaVersion, record: str) -> list[str]:
        payload = next(f for f in version.source["fields"] if f["name"] == "payload")["type"]
        return [f["name"] for f in next(r for r in payload if r["name"] == record)["fields"]]

    v1, v2 = schemas.versions()[:2]
    for record in ("TaskCreated", "ResponseSubmitted", "CancelRequested", "RequestRejected"):
        assert "protocol" not in fields_of(v1, record)
        assert "protocol" in fields_of(v2, record)
