"""Avro single-object encoding of task events.

Wire format (Avro specification, "Single object encoding"): the marker ``C3 01``, the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body. Every
record thus names the schema it was written with; records of any shipped version decode into
the current event models. fastavro writes; bodies are read by readers compiled once per schema
version (``ledger.contract.avro``), which are tested against fastavro's reading.
"""

from __future__ import annotations

import io
from functools import cache
from sys import intern
from typing import Any

from fastavro import schemaless_writer
from fastavro._read import schemaless_reader

from ledger.contract import schemas
from ledger.contract.avro import Reader, Unsupported, compile_reader
from ledger.contract.events import EVENT_TYPES, TaskEvent

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8


class DecodeError(ValueError):
    """A record on the log cannot be turned into an event."""


class UnknownSchema(DecodeError):
    def __init__(self, fingerprint: bytes) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"record written with unknown schema fingerprint {fingerprint.hex()} "
            "(not one of the shipped task_event.vN.avsc versions)"
        )


class CorruptRecord(DecodeError):
    """The bytes are not a single-object-encoded task event."""


# Values that repeat across tasks (a tool's name and question schema, who wrote the event, the
# protocol path): decoded events share one copy, so the many tasks a worker or server holds in
# memory cost less.
SHARED_TEXT_FIELDS = ("tool", "actor", "principal", "protocol", "requested_schema_json", "mode", "action")


class Codec:
    """Encodes events with the current schema; decodes records of every shipped version."""

    def __init__(self) -> None:
        self._writer = schemas.current()
        self._header = MARKER + self._writer.fingerprint
        self._readers = _readers()
        self._build = {name: cls.trusted for name, cls in EVENT_TYPES.items()}

    @property
    def fingerprint(self) -> bytes:
        return self._writer.fingerprint

    def encode(self, event: TaskEvent) -> bytes:
        fields = dict(event.__dict__)
        payload = {name: fields.pop(name) for name in event._payload_names}
        fields["payload"] = (event.avro_name, payload)
        buffer = io.BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self._writer.parsed, fields)
        return buffer.getvalue()

    def decode(self, data: bytes) -> TaskEvent:
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise CorruptRecord(
                f"not a single-object-encoded record ({len(data)} bytes, starts {data[:2].hex() or 'empty'})"
            )
        fingerprint = data[2:HEADER_SIZE]
        reader = self._readers.get(fingerprint)
        if reader is None:
            raise UnknownSchema(fingerprint)
        try:
            name, fields, end = reader(data, HEADER_SIZE)
        except Exception as exc:  # a mix of IndexError/ValueError/UnicodeError/struct.error/EOFError
            raise CorruptRecord(f"Avro body does not decode with schema {fingerprint.hex()}: {exc!r}") from exc
        if end != len(data):
            raise CorruptRecord(f"{len(data) - end} trailing bytes after the Avro body")
        return self._build[name](fields)


@cache
def _readers() -> dict[bytes, Reader]:
    """Each shipped version's reader by fingerprint, compiled once per process (about 10 ms)."""
    current = schemas.current().parsed
    return {v.fingerprint: reader_of(v.parsed, current) for v in schemas.versions()}


def reader_of(writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
    """The compiled reader of ``writer``'s bodies, or fastavro's for a schema it does not cover."""
    try:
        return compile_reader(writer, reader, SHARED_TEXT_FIELDS)
    except Unsupported:
        return fastavro_reader(writer, reader)


def fastavro_reader(writer: dict[str, Any], reader: dict[str, Any]) -> Reader:
    """fastavro's reading of ``writer``'s bodies as ``reader``, in the compiled readers' shape: the
    reference they are tested against."""
    resolve_to = None if writer is reader else reader  # same-version reads skip schema resolution

    def read(data: bytes, pos: int) -> tuple[str, dict[str, Any], int]:
        body = io.BytesIO(data)
        body.seek(pos)
        record = schemaless_reader(body, writer, resolve_to, True)
        name, payload = record.pop("payload")
        record.update(payload)
        for field in SHARED_TEXT_FIELDS:
            value = record.get(field)
            if value is not None:
                record[field] = intern(value)
        return name, record, body.tell()

    return read
