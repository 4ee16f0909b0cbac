"""Records read from the log: decoded events with their position, or dead letters."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ledger.contract.codec import Codec, DecodeError, UnknownSchema
from ledger.contract.events import TaskEvent

log = logging.getLogger(__name__)


class Position(NamedTuple):
    partition: int
    offset: int


class LogRecord(NamedTuple):
    """An event where it sits on the log, with the record's bytes as written (the history keeps them).

    A named tuple: a replay makes one per event, and a frozen dataclass costs twice as much to build."""

    partition: int
    offset: int
    event: TaskEvent
    value: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record on the log that does not decode: kept, reported and skipped, never fatal."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    fingerprint: str | None  # hex, when the record named a schema we do not know

    def describe(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}: {self.reason}"


DeadLetterSink = Callable[[DeadLetter], Awaitable[None]]


def decode_records(codec: Codec, topic: str, partition: int, raw: Iterable[Any]) -> tuple[list[LogRecord], list[DeadLetter]]:
    """Decode consumer records of one partition; undecodable ones become dead letters."""
    records: list[LogRecord] = []
    dead: list[DeadLetter] = []
    decode = codec.decode
    for message in raw:
        try:
            records.append(LogRecord(partition, message.offset, decode(message.value), message.value))
        except DecodeError as exc:
            fingerprint = exc.fingerprint.hex() if isinstance(exc, UnknownSchema) else None
            dead.append(DeadLetter(topic, partition, message.offset, message.key, message.value or b"", str(exc), fingerprint))
    return records, dead


async def log_dead_letter(letter: DeadLetter) -> None:
    log.error("skipped undecodable record %s", letter.describe())

