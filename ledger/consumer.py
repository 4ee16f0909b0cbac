"""What the reader and the group consumer share: fetching and decoding, dead letters, lifecycle."""

from __future__ import annotations

from typing import Self

from aiokafka import AIOKafkaConsumer

from ledger.codec import Codec
from ledger.records import DeadLetterSink, LogRecord, decode_records
from ledger.settings import Settings


class DecodingConsumer:
    """An aiokafka consumer on the task-events topic that yields decoded events.

    Records that do not decode go to the dead-letter sink and are counted; they never stop
    the loop.
    """

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        codec: Codec | None,
        dead_letters: DeadLetterSink,
        max_records: int,
    ) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        self.codec = codec or Codec()
        self.dead_letter_count = 0
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._max_records = max_records

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def fetch(self, timeout_ms: int | None = None) -> list[LogRecord]:
        """One fetch across the assigned partitions; may be empty."""
        wait = self.settings.fetch_max_wait_ms if timeout_ms is None else timeout_ms
        fetched = await self._consumer.getmany(timeout_ms=wait, max_records=self._max_records)
        records: list[LogRecord] = []
        for tp, messages in fetched.items():
            if not messages:
                continue
            decoded, dead = decode_records(self.codec, self.topic, tp.partition, messages)
            records.extend(decoded)
            for letter in dead:
                self.dead_letter_count += 1
                await self._dead_letters(letter)
            self._fetched(tp.partition, messages[-1].offset + 1)
        return records

    def _fetched(self, partition: int, next_offset: int) -> None:
        """Called after each partition's records are handled; subclasses track positions."""
